/*
 * cuda_ops_embed.cu - the CUDA backend's token and position embedding, forward and backward.
 */
#include "kernels/cuda/cuda_common.cuh"

void nb_cuda_register_embed(nb_backend_i *i)
{
    (void)i;
}
