/*
 * cpu_ops_bias.c - bias add (forward of a linear layer's bias) and bias
 * gradient (column sums) on the CPU backend.
 * Shapes: y, dy (rows, cols); bias, dbias (cols).
 */
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_vec.h"

void nb_cpu_bias_add(nb_backend_t *be, float *y, const float *bias, int rows, int cols)
{
    NB_CHECK(rows >= 0 && cols >= 0);
    for (int r = 0; r < rows; r++) {
        float *yr = y + (size_t)r * cols;
        int c = 0;
        for (; c + NB_VL <= cols; c += NB_VL)
            nb_v_store(yr + c, nb_v_load(yr + c) + nb_v_load(bias + c));
        for (; c < cols; c++)
            yr[c] += bias[c];
    }
}

/* Rows are summed in order 0..rows-1 for every column: deterministic, and the
 * inner loop runs along a contiguous row so it vectorises. */
void nb_cpu_bias_grad(nb_backend_t *be, float *dbias, const float *dy, int rows, int cols)
{
    NB_CHECK(rows >= 0 && cols >= 0);
    for (int r = 0; r < rows; r++) {
        const float *dr = dy + (size_t)r * cols;
        int c = 0;
        for (; c + NB_VL <= cols; c += NB_VL)
            nb_v_store(dbias + c, nb_v_load(dbias + c) + nb_v_load(dr + c));
        for (; c < cols; c++)
            dbias[c] += dr[c];
    }
}
