/*
 * cuda_ops_attention.cu - the CUDA backend's fused self- and cross-attention,
 * forward and backward, in the FlashAttention-2 style: no T x S score or
 * probability matrix is ever stored, in global memory or anywhere else.
 *
 * One kernel family serves both ops. A head's queries, keys and values are
 * addressed by base pointer + row stride (self-attention: the three parts of
 * the packed qkv rows, stride 3C; cross-attention: q stride C, the two parts
 * of the packed kv rows, stride 2C), S keys, and a causal flag (self only).
 *
 * The attention state (the att argument) is a log-sum-exp per (b, h, query)
 * row, B*NH*T floats, layout [b][h][t]; +INFINITY marks a query whose keys
 * are all masked (its probabilities are then exactly 0, as on the CPU
 * backend, which gives such a row zero output and zero gradients).
 *
 *  - forward (query tiles): online softmax over key tiles in shared memory;
 *    writes out and the log-sum-exp.
 *  - backward, three kernels, no atomics:
 *    1. the forward kernel again, which instead of out writes
 *       D = rowsum(dO * O) per (b, h, query) into scratch (the state cannot
 *       hold a copy of O: its size function does not know C);
 *    2. dQ over query tiles: P = exp(s - lse) recomputed per key tile,
 *       dS = P (dO V^T - D) scale, dQ += dS K;
 *    3. dK, dV over key tiles, looping over query tiles: dV += P^T dO,
 *       dK += dS^T Q.
 *    Every output element is owned by one thread, which adds its fixed-order
 *    sum to what is there (the ops accumulate): bit-identical runs.
 *
 * Thread mapping: 4 warps per block; each warp owns RPW rows (queries in the
 * forward and dQ kernels, keys in dK/dV) and a lane stands for one key (one
 * query in dK/dV) of the 32-wide tile while scores are formed, then for head
 * dimensions d = lane + 32c (c < NCH, HS <= 32 NCH) while the products with
 * V, K, Q or dO accumulate in registers. Tiles whose rows are read by one
 * lane each are padded to an odd stride (no bank conflicts); RPW shrinks as
 * HS grows so that shared memory stays within the default 48 KiB.
 * docs/cuda-ops-attention.md has the details and the tolerances.
 */
#include "kernels/cuda/cuda_common.cuh"

#define ATT_WARPS 4
#define ATT_THREADS (32 * ATT_WARPS)
#define ATT_TILE 32      /* keys per tile (forward, dQ), queries per tile (dK/dV) */
#define ATT_MAX_HS 128

/* One call's geometry and pointers. Row r of q starts at q + r * qs (r over
 * the B*T queries), row r of k and v at k + r * ks, v + r * vs (r over the B*S
 * keys); head h uses columns h*HS .. h*HS+HS-1 of each. */
struct att_args {
    const float *q, *k, *v;
    int qs, ks, vs;
    const float *dout;   /* (B,T,C), row stride C; backward and D mode */
    float *out;          /* (B,T,C), forward */
    float *lse;          /* (B,NH,T): written by the forward */
    const float *lse_in; /* (B,NH,T): read by the backward */
    float *dsum;         /* (B,NH,T): D mode output */
    const float *dsum_in;
    const uint8_t *mask; /* (B,S) or NULL */
    float *dq, *dk, *dv;
    int dqs, dks, dvs;
    int B, T, S, C, NH, HS;
    int causal;
    float scale;
};

/* Padded row stride: odd, so 32 lanes reading one row each hit 32 banks. */
__host__ __device__ static inline int att_pad(int hs) { return hs | 1; }

/* Four floats read at once from shared memory (one 16-byte load): rows that
 * every lane reads alike (broadcast) when HS % 4 == 0, and the per-warp
 * probability buffers. Every such row starts at a multiple of 4 floats. */
struct alignas(16) att_f4 {
    float x, y, z, w;
};
__device__ __forceinline__ att_f4 att_ld4(const float *p) { return *(const att_f4 *)p; }

/* ---- forward (and D mode) ------------------------------------------------ */

/* Floats of shared memory of the forward kernel. */
static size_t fwd_smem_floats(int rpw, int hs)
{
    int bq = ATT_WARPS * rpw;
    return (size_t)bq * hs + (size_t)ATT_TILE * att_pad(hs) + (size_t)ATT_TILE * hs +
           (size_t)bq * ATT_TILE + ATT_TILE;
}

/* grid (ceil(T / (4 RPW)), NH, B), block 128. Without a.dsum: out and lse.
 * With a.dsum: out is recomputed but not stored; D = dout . out per row goes
 * to a.dsum instead. */
template <int RPW, int NCH>
__global__ static void att_fwd_kernel(att_args a)
{
    NB_DYN_SMEM(float, smem);
    const int HS = a.HS, HSP = att_pad(HS), BQ = ATT_WARPS * RPW;
    const int HS4 = (HS & 3) ? 0 : HS; /* vector reads of broadcast rows up to here */
    float *Qs = smem;                    /* BQ x HS */
    float *Ks = Qs + BQ * HS;            /* TILE x HSP */
    float *Vs = Ks + ATT_TILE * HSP;     /* TILE x HS */
    float *Ps = Vs + ATT_TILE * HS;      /* BQ x TILE */
    float *Ms = Ps + BQ * ATT_TILE;      /* TILE: 1 = key may be attended */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BQ;
    const int T = a.T, S = a.S;
    const float *qb = a.q + (size_t)b * T * a.qs + h * HS;
    const float *kb = a.k + (size_t)b * S * a.ks + h * HS;
    const float *vb = a.v + (size_t)b * S * a.vs + h * HS;

    for (int i = tid; i < BQ * HS; i += ATT_THREADS) {
        int r = i / HS, d = i - r * HS, t = q0 + r;
        Qs[i] = t < T ? qb[(size_t)t * a.qs + d] : 0.0f;
    }
    float m[RPW], l[RPW], o[RPW][NCH];
    for (int i = 0; i < RPW; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
        for (int c = 0; c < NCH; c++)
            o[i][c] = 0.0f;
    }
    int kend = S;
    if (a.causal && q0 + BQ < kend)
        kend = q0 + BQ;
    for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
        __syncthreads(); /* the previous tile is no longer read */
        for (int i = tid; i < ATT_TILE * HS; i += ATT_THREADS) {
            int j = i / HS, d = i - j * HS, key = k0 + j;
            bool in = key < S;
            Ks[j * HSP + d] = in ? kb[(size_t)key * a.ks + d] : 0.0f;
            Vs[j * HS + d] = in ? vb[(size_t)key * a.vs + d] : 0.0f;
        }
        if (tid < ATT_TILE) {
            int key = k0 + tid;
            Ms[tid] = (key < S && (!a.mask || a.mask[(size_t)b * S + key])) ? 1.0f : 0.0f;
        }
        __syncthreads();
        /* scores of this warp's rows against key k0 + lane */
        float acc[RPW];
        for (int i = 0; i < RPW; i++)
            acc[i] = 0.0f;
        const float *kr = Ks + lane * HSP;
        const float *qw = Qs + warp * RPW * HS;
        int d = 0;
        for (; d < HS4; d += 4) {
            float k0_ = kr[d], k1 = kr[d + 1], k2 = kr[d + 2], k3 = kr[d + 3];
            for (int i = 0; i < RPW; i++) {
                att_f4 qv = att_ld4(qw + i * HS + d);
                acc[i] += qv.x * k0_;
                acc[i] += qv.y * k1;
                acc[i] += qv.z * k2;
                acc[i] += qv.w * k3;
            }
        }
        for (; d < HS; d++) {
            float kd = kr[d];
            for (int i = 0; i < RPW; i++)
                acc[i] += qw[i * HS + d] * kd;
        }
        const int key = k0 + lane;
        const bool kvalid = Ms[lane] != 0.0f;
        for (int i = 0; i < RPW; i++) {
            int t = q0 + warp * RPW + i;
            bool valid = kvalid && t < T && (!a.causal || key <= t);
            float s = valid ? acc[i] * a.scale : -INFINITY;
            float mnew = fmaxf(m[i], nb_warp_max(s));
            float p = valid ? expf(s - mnew) : 0.0f;
            float corr = m[i] == -INFINITY ? 0.0f : expf(m[i] - mnew);
            l[i] = l[i] * corr + nb_warp_sum(p);
            m[i] = mnew;
            for (int c = 0; c < NCH; c++)
                o[i][c] *= corr;
            Ps[(warp * RPW + i) * ATT_TILE + lane] = p;
        }
        __syncwarp();
        /* all 32 keys: a key past the end or masked has p = 0 (and a
         * finite, zero-filled or real, V row), so it adds nothing */
        const float *pw = Ps + warp * RPW * ATT_TILE;
        for (int j = 0; j < ATT_TILE; j += 4) {
            float vv[4][NCH];
            for (int jj = 0; jj < 4; jj++)
                for (int c = 0; c < NCH; c++) {
                    int dd = lane + 32 * c;
                    vv[jj][c] = dd < HS ? Vs[(j + jj) * HS + dd] : 0.0f;
                }
            for (int i = 0; i < RPW; i++) {
                att_f4 p4 = att_ld4(pw + i * ATT_TILE + j);
                for (int c = 0; c < NCH; c++) {
                    o[i][c] += p4.x * vv[0][c];
                    o[i][c] += p4.y * vv[1][c];
                    o[i][c] += p4.z * vv[2][c];
                    o[i][c] += p4.w * vv[3][c];
                }
            }
        }
        __syncwarp(); /* Ps is rewritten by the next tile (also after the barrier) */
    }
    for (int i = 0; i < RPW; i++) {
        int t = q0 + warp * RPW + i;
        if (t >= T)
            continue; /* uniform over the warp */
        float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        size_t row = (size_t)b * T + t, st = ((size_t)b * a.NH + h) * T + t;
        if (a.dsum) {
            const float *dor = a.dout + row * a.C + h * HS;
            float part = 0.0f;
            for (int c = 0; c < NCH; c++) {
                int d = lane + 32 * c;
                if (d < HS)
                    part += o[i][c] * inv * dor[d];
            }
            float dsum = nb_warp_sum(part);
            if (lane == 0)
                a.dsum[st] = dsum;
        } else {
            float *orow = a.out + row * a.C + h * HS;
            for (int c = 0; c < NCH; c++) {
                int d = lane + 32 * c;
                if (d < HS)
                    orow[d] = o[i][c] * inv;
            }
            if (lane == 0)
                a.lse[st] = m[i] == -INFINITY ? INFINITY : m[i] + logf(l[i]);
        }
    }
}

/* ---- backward: dQ over query tiles ---------------------------------------- */

static size_t dq_smem_floats(int rpw, int hs)
{
    int bq = ATT_WARPS * rpw;
    return 2 * (size_t)bq * hs + 2 * (size_t)ATT_TILE * att_pad(hs) + (size_t)bq * ATT_TILE + ATT_TILE;
}

/* grid (ceil(T / (4 RPW)), NH, B), block 128: dq += dS K. */
template <int RPW, int NCH>
__global__ static void att_dq_kernel(att_args a)
{
    NB_DYN_SMEM(float, smem);
    const int HS = a.HS, HSP = att_pad(HS), BQ = ATT_WARPS * RPW;
    const int HS4 = (HS & 3) ? 0 : HS; /* vector reads of broadcast rows up to here */
    float *Qs = smem;                    /* BQ x HS */
    float *dOs = Qs + BQ * HS;           /* BQ x HS */
    float *Ks = dOs + BQ * HS;           /* TILE x HSP */
    float *Vs = Ks + ATT_TILE * HSP;     /* TILE x HSP */
    float *Ps = Vs + ATT_TILE * HSP;     /* BQ x TILE: dS */
    float *Ms = Ps + BQ * ATT_TILE;      /* TILE */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BQ;
    const int T = a.T, S = a.S;
    const float *qb = a.q + (size_t)b * T * a.qs + h * HS;
    const float *kb = a.k + (size_t)b * S * a.ks + h * HS;
    const float *vb = a.v + (size_t)b * S * a.vs + h * HS;
    const float *ob = a.dout + (size_t)b * T * a.C + h * HS;

    for (int i = tid; i < BQ * HS; i += ATT_THREADS) {
        int r = i / HS, d = i - r * HS, t = q0 + r;
        Qs[i] = t < T ? qb[(size_t)t * a.qs + d] : 0.0f;
        dOs[i] = t < T ? ob[(size_t)t * a.C + d] : 0.0f;
    }
    float lse[RPW], dsum[RPW], g[RPW][NCH];
    for (int i = 0; i < RPW; i++) {
        int t = q0 + warp * RPW + i;
        size_t st = ((size_t)b * a.NH + h) * T + t;
        lse[i] = t < T ? a.lse_in[st] : INFINITY;
        dsum[i] = t < T ? a.dsum_in[st] : 0.0f;
        for (int c = 0; c < NCH; c++)
            g[i][c] = 0.0f;
    }
    int kend = S;
    if (a.causal && q0 + BQ < kend)
        kend = q0 + BQ;
    for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
        __syncthreads();
        for (int i = tid; i < ATT_TILE * HS; i += ATT_THREADS) {
            int j = i / HS, d = i - j * HS, key = k0 + j;
            bool in = key < S;
            Ks[j * HSP + d] = in ? kb[(size_t)key * a.ks + d] : 0.0f;
            Vs[j * HSP + d] = in ? vb[(size_t)key * a.vs + d] : 0.0f;
        }
        if (tid < ATT_TILE) {
            int key = k0 + tid;
            Ms[tid] = (key < S && (!a.mask || a.mask[(size_t)b * S + key])) ? 1.0f : 0.0f;
        }
        __syncthreads();
        float accs[RPW], accp[RPW];
        for (int i = 0; i < RPW; i++)
            accs[i] = accp[i] = 0.0f;
        const float *kr = Ks + lane * HSP, *vr = Vs + lane * HSP;
        const float *qw = Qs + warp * RPW * HS, *ow = dOs + warp * RPW * HS;
        int d = 0;
        for (; d < HS4; d += 4) {
            float k0_ = kr[d], k1 = kr[d + 1], k2 = kr[d + 2], k3 = kr[d + 3];
            float v0 = vr[d], v1 = vr[d + 1], v2 = vr[d + 2], v3 = vr[d + 3];
            for (int i = 0; i < RPW; i++) {
                att_f4 qv = att_ld4(qw + i * HS + d), ov = att_ld4(ow + i * HS + d);
                accs[i] += qv.x * k0_;
                accs[i] += qv.y * k1;
                accs[i] += qv.z * k2;
                accs[i] += qv.w * k3;
                accp[i] += ov.x * v0;
                accp[i] += ov.y * v1;
                accp[i] += ov.z * v2;
                accp[i] += ov.w * v3;
            }
        }
        for (; d < HS; d++) {
            float kd = kr[d], vd = vr[d];
            for (int i = 0; i < RPW; i++) {
                accs[i] += qw[i * HS + d] * kd;
                accp[i] += ow[i * HS + d] * vd;
            }
        }
        const int key = k0 + lane;
        const bool kvalid = Ms[lane] != 0.0f;
        for (int i = 0; i < RPW; i++) {
            int t = q0 + warp * RPW + i;
            bool valid = kvalid && t < T && (!a.causal || key <= t);
            float p = valid ? expf(accs[i] * a.scale - lse[i]) : 0.0f;
            Ps[(warp * RPW + i) * ATT_TILE + lane] = p * (accp[i] - dsum[i]) * a.scale;
        }
        __syncwarp();
        const float *pw = Ps + warp * RPW * ATT_TILE; /* dS; 0 where p is */
        for (int j = 0; j < ATT_TILE; j += 4) {
            float kk[4][NCH];
            for (int jj = 0; jj < 4; jj++)
                for (int c = 0; c < NCH; c++) {
                    int dd = lane + 32 * c;
                    kk[jj][c] = dd < HS ? Ks[(j + jj) * HSP + dd] : 0.0f;
                }
            for (int i = 0; i < RPW; i++) {
                att_f4 s4 = att_ld4(pw + i * ATT_TILE + j);
                for (int c = 0; c < NCH; c++) {
                    g[i][c] += s4.x * kk[0][c];
                    g[i][c] += s4.y * kk[1][c];
                    g[i][c] += s4.z * kk[2][c];
                    g[i][c] += s4.w * kk[3][c];
                }
            }
        }
        __syncwarp();
    }
    for (int i = 0; i < RPW; i++) {
        int t = q0 + warp * RPW + i;
        if (t >= T)
            continue;
        float *dqr = a.dq + ((size_t)b * T + t) * a.dqs + h * HS;
        for (int c = 0; c < NCH; c++) {
            int d = lane + 32 * c;
            if (d < HS)
                dqr[d] += g[i][c];
        }
    }
}

/* ---- backward: dK, dV over key tiles -------------------------------------- */

static size_t dkv_smem_floats(int rpw, int hs)
{
    int bk = ATT_WARPS * rpw;
    return 2 * (size_t)bk * hs + 2 * (size_t)ATT_TILE * att_pad(hs) + 2 * (size_t)bk * ATT_TILE +
           2 * ATT_TILE;
}

/* grid (ceil(S / (4 RPW)), NH, B), block 128: dv += P^T dO, dk += dS^T Q. */
template <int RPW, int NCH>
__global__ static void att_dkv_kernel(att_args a)
{
    NB_DYN_SMEM(float, smem);
    const int HS = a.HS, HSP = att_pad(HS), BK = ATT_WARPS * RPW;
    const int HS4 = (HS & 3) ? 0 : HS;
    float *Ks = smem;                    /* BK x HS */
    float *Vs = Ks + BK * HS;            /* BK x HS */
    float *Qs = Vs + BK * HS;            /* TILE x HSP */
    float *dOs = Qs + ATT_TILE * HSP;    /* TILE x HSP */
    float *Ps = dOs + ATT_TILE * HSP;    /* BK x TILE: P */
    float *dSs = Ps + BK * ATT_TILE;     /* BK x TILE: dS */
    float *Ls = dSs + BK * ATT_TILE;     /* TILE: lse */
    float *Ds = Ls + ATT_TILE;           /* TILE: D */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int b = blockIdx.z, h = blockIdx.y, k0 = blockIdx.x * BK;
    const int T = a.T, S = a.S;
    const float *qb = a.q + (size_t)b * T * a.qs + h * HS;
    const float *kb = a.k + (size_t)b * S * a.ks + h * HS;
    const float *vb = a.v + (size_t)b * S * a.vs + h * HS;
    const float *ob = a.dout + (size_t)b * T * a.C + h * HS;
    const size_t st0 = ((size_t)b * a.NH + h) * T;

    for (int i = tid; i < BK * HS; i += ATT_THREADS) {
        int r = i / HS, d = i - r * HS, key = k0 + r;
        Ks[i] = key < S ? kb[(size_t)key * a.ks + d] : 0.0f;
        Vs[i] = key < S ? vb[(size_t)key * a.vs + d] : 0.0f;
    }
    bool kvalid[RPW];
    float gk[RPW][NCH], gv[RPW][NCH];
    for (int i = 0; i < RPW; i++) {
        int key = k0 + warp * RPW + i;
        kvalid[i] = key < S && (!a.mask || a.mask[(size_t)b * S + key]);
        for (int c = 0; c < NCH; c++)
            gk[i][c] = gv[i][c] = 0.0f;
    }
    /* causal: queries before the block's first key see none of its keys */
    int qstart = a.causal ? (k0 / ATT_TILE) * ATT_TILE : 0;
    for (int q0 = qstart; q0 < T; q0 += ATT_TILE) {
        __syncthreads();
        for (int i = tid; i < ATT_TILE * HS; i += ATT_THREADS) {
            int r = i / HS, d = i - r * HS, t = q0 + r;
            Qs[r * HSP + d] = t < T ? qb[(size_t)t * a.qs + d] : 0.0f;
            dOs[r * HSP + d] = t < T ? ob[(size_t)t * a.C + d] : 0.0f;
        }
        if (tid < ATT_TILE) {
            int t = q0 + tid;
            Ls[tid] = t < T ? a.lse_in[st0 + t] : INFINITY;
            Ds[tid] = t < T ? a.dsum_in[st0 + t] : 0.0f;
        }
        __syncthreads();
        float accs[RPW], accp[RPW];
        for (int i = 0; i < RPW; i++)
            accs[i] = accp[i] = 0.0f;
        const float *qr = Qs + lane * HSP, *orow = dOs + lane * HSP;
        const float *kw = Ks + warp * RPW * HS, *vw = Vs + warp * RPW * HS;
        int d = 0;
        for (; d < HS4; d += 4) {
            float q0_ = qr[d], q1 = qr[d + 1], q2 = qr[d + 2], q3 = qr[d + 3];
            float o0 = orow[d], o1 = orow[d + 1], o2 = orow[d + 2], o3 = orow[d + 3];
            for (int i = 0; i < RPW; i++) {
                att_f4 kv4 = att_ld4(kw + i * HS + d), vv4 = att_ld4(vw + i * HS + d);
                accs[i] += q0_ * kv4.x;
                accs[i] += q1 * kv4.y;
                accs[i] += q2 * kv4.z;
                accs[i] += q3 * kv4.w;
                accp[i] += o0 * vv4.x;
                accp[i] += o1 * vv4.y;
                accp[i] += o2 * vv4.z;
                accp[i] += o3 * vv4.w;
            }
        }
        for (; d < HS; d++) {
            float qd = qr[d], od = orow[d];
            for (int i = 0; i < RPW; i++) {
                accs[i] += qd * kw[i * HS + d];
                accp[i] += od * vw[i * HS + d];
            }
        }
        const int t = q0 + lane;
        const float lse = Ls[lane], dsum = Ds[lane];
        for (int i = 0; i < RPW; i++) {
            int key = k0 + warp * RPW + i;
            bool valid = kvalid[i] && t < T && (!a.causal || key <= t);
            float p = valid ? expf(accs[i] * a.scale - lse) : 0.0f;
            Ps[(warp * RPW + i) * ATT_TILE + lane] = p;
            dSs[(warp * RPW + i) * ATT_TILE + lane] = p * (accp[i] - dsum) * a.scale;
        }
        __syncwarp();
        /* all 32 queries: one past the end has p = dS = 0 and zero rows */
        const float *pw = Ps + warp * RPW * ATT_TILE, *sw = dSs + warp * RPW * ATT_TILE;
        for (int r = 0; r < ATT_TILE; r += 4) {
            float qq[4][NCH], oo[4][NCH];
            for (int rr = 0; rr < 4; rr++)
                for (int c = 0; c < NCH; c++) {
                    int dd = lane + 32 * c;
                    qq[rr][c] = dd < HS ? Qs[(r + rr) * HSP + dd] : 0.0f;
                    oo[rr][c] = dd < HS ? dOs[(r + rr) * HSP + dd] : 0.0f;
                }
            for (int i = 0; i < RPW; i++) {
                att_f4 p4 = att_ld4(pw + i * ATT_TILE + r), s4 = att_ld4(sw + i * ATT_TILE + r);
                for (int c = 0; c < NCH; c++) {
                    gv[i][c] += p4.x * oo[0][c];
                    gv[i][c] += p4.y * oo[1][c];
                    gv[i][c] += p4.z * oo[2][c];
                    gv[i][c] += p4.w * oo[3][c];
                    gk[i][c] += s4.x * qq[0][c];
                    gk[i][c] += s4.y * qq[1][c];
                    gk[i][c] += s4.z * qq[2][c];
                    gk[i][c] += s4.w * qq[3][c];
                }
            }
        }
        __syncwarp();
    }
    for (int i = 0; i < RPW; i++) {
        int key = k0 + warp * RPW + i;
        if (key >= S)
            continue;
        float *dkr = a.dk + ((size_t)b * S + key) * a.dks + h * HS;
        float *dvr = a.dv + ((size_t)b * S + key) * a.dvs + h * HS;
        for (int c = 0; c < NCH; c++) {
            int d = lane + 32 * c;
            if (d < HS) {
                dkr[d] += gk[i][c];
                dvr[d] += gv[i][c];
            }
        }
    }
}

/* ---- host side ------------------------------------------------------------ */

/* Rows per warp by kernel and head-size chunk count (NCH = ceil(HS / 32)),
 * chosen so that shared memory stays within 48 KiB at HS = 32 NCH. Shared
 * memory at HS = 32, 64, 96, 128: forward 16.3, 28.3, 40.3, 42.3 KiB; dQ 20.4,
 * 36.4, 38.4, 41.4 KiB; dK/dV 24.5, 40.5, 40.5, 42.5 KiB. */
enum { K_FWD, K_DQ, K_DKV };
static const int att_rpw[3][4] = {
    /* NCH: 1  2  3  4 */
    { 8, 8, 8, 4 }, /* forward */
    { 8, 8, 4, 2 }, /* dQ */
    { 8, 8, 4, 2 }, /* dK/dV */
};

static size_t att_smem_bytes(int kind, int rpw, int hs)
{
    size_t f = kind == K_FWD ? fwd_smem_floats(rpw, hs)
             : kind == K_DQ ? dq_smem_floats(rpw, hs) : dkv_smem_floats(rpw, hs);
    return f * sizeof(float);
}

template <int RPW, int NCH>
static void att_launch_t(int kind, const att_args &a, cudaStream_t st)
{
    size_t smem = att_smem_bytes(kind, RPW, a.HS);
    NB_CHECK(smem <= 48 * 1024);
    unsigned rows = ATT_WARPS * RPW;
    if (kind == K_FWD) {
        auto k = att_fwd_kernel<RPW, NCH>;
        NB_LAUNCH(k, dim3((a.T + rows - 1) / rows, a.NH, a.B), ATT_THREADS, smem, st)(a);
    } else if (kind == K_DQ) {
        auto k = att_dq_kernel<RPW, NCH>;
        NB_LAUNCH(k, dim3((a.T + rows - 1) / rows, a.NH, a.B), ATT_THREADS, smem, st)(a);
    } else {
        auto k = att_dkv_kernel<RPW, NCH>;
        NB_LAUNCH(k, dim3((a.S + rows - 1) / rows, a.NH, a.B), ATT_THREADS, smem, st)(a);
    }
    NB_CUDA_LAUNCHED();
}

/* Instantiates the kernels for the table att_rpw: RPW is a compile-time
 * constant of each (kernel, NCH) pair. */
template <int NCH>
static void att_launch_nch(int kind, const att_args &a, cudaStream_t st)
{
    switch (att_rpw[kind][NCH - 1]) {
    case 8: att_launch_t<8, NCH>(kind, a, st); break;
    case 4: att_launch_t<4, NCH>(kind, a, st); break;
    default: att_launch_t<2, NCH>(kind, a, st); break;
    }
}

static void att_launch(nb_backend_t *be, int kind, const att_args &a)
{
    cudaStream_t st = nb_cuda_stream(be);
    switch ((a.HS + 31) / 32) {
    case 1: att_launch_nch<1>(kind, a, st); break;
    case 2: att_launch_nch<2>(kind, a, st); break;
    case 3: att_launch_nch<3>(kind, a, st); break;
    default: att_launch_nch<4>(kind, a, st); break;
    }
}

static att_args att_make(int B, int T, int S, int C, int NH, bool causal, const uint8_t *mask)
{
    NB_CHECK(B >= 0 && T > 0 && S > 0 && C > 0 && NH > 0 && C % NH == 0);
    /* Larger heads would need more than the default 48 KiB of shared memory
     * per block (docs/cuda-ops-attention.md). */
    NB_CHECK(C / NH <= ATT_MAX_HS);
    att_args a = {};
    a.B = B;
    a.T = T;
    a.S = S;
    a.C = C;
    a.NH = NH;
    a.HS = C / NH;
    a.causal = causal ? 1 : 0;
    a.scale = 1.0f / sqrtf((float)a.HS); /* as the CPU backend */
    a.mask = mask;
    return a;
}

/* The backward's three kernels; a has q/k/v, dout, lse_in, mask, dq/dk/dv. */
static void att_backward(nb_backend_t *be, att_args a)
{
    size_t rows = (size_t)a.B * a.NH * a.T;
    float *dsum = (float *)nb_cuda_scratch(be, rows * sizeof(float));
    a.dsum = dsum;
    att_launch(be, K_FWD, a);
    a.dsum = NULL;
    a.dsum_in = dsum;
    att_launch(be, K_DQ, a);
    att_launch(be, K_DKV, a);
}

static void cu_attention_fwd(nb_backend_t *be, float *out, float *att, const float *qkv,
                             const uint8_t *key_mask, bool causal, int B, int T, int C, int NH)
{
    att_args a = att_make(B, T, T, C, NH, causal, key_mask);
    if (B == 0)
        return;
    a.q = qkv;
    a.k = qkv + C;
    a.v = qkv + 2 * C;
    a.qs = a.ks = a.vs = 3 * C;
    a.out = out;
    a.lse = att;
    att_launch(be, K_FWD, a);
}

static void cu_attention_bwd(nb_backend_t *be, float *dqkv, const float *dout, const float *qkv,
                             const float *att, const uint8_t *key_mask, bool causal,
                             int B, int T, int C, int NH)
{
    att_args a = att_make(B, T, T, C, NH, causal, key_mask);
    if (B == 0)
        return;
    a.q = qkv;
    a.k = qkv + C;
    a.v = qkv + 2 * C;
    a.qs = a.ks = a.vs = 3 * C;
    a.dout = dout;
    a.lse_in = att;
    a.dq = dqkv;
    a.dk = dqkv + C;
    a.dv = dqkv + 2 * C;
    a.dqs = a.dks = a.dvs = 3 * C;
    att_backward(be, a);
}

static void cu_xattn_fwd(nb_backend_t *be, float *out, float *att, const float *q, const float *kv,
                         const uint8_t *key_mask, int B, int T, int S, int C, int NH)
{
    att_args a = att_make(B, T, S, C, NH, false, key_mask);
    if (B == 0)
        return;
    a.q = q;
    a.qs = C;
    a.k = kv;
    a.v = kv + C;
    a.ks = a.vs = 2 * C;
    a.out = out;
    a.lse = att;
    att_launch(be, K_FWD, a);
}

static void cu_xattn_bwd(nb_backend_t *be, float *dq, float *dkv, const float *dout, const float *q,
                         const float *kv, const float *att, const uint8_t *key_mask,
                         int B, int T, int S, int C, int NH)
{
    att_args a = att_make(B, T, S, C, NH, false, key_mask);
    if (B == 0)
        return;
    a.q = q;
    a.qs = C;
    a.k = kv;
    a.v = kv + C;
    a.ks = a.vs = 2 * C;
    a.dout = dout;
    a.lse_in = att;
    a.dq = dq;
    a.dqs = C;
    a.dk = dkv;
    a.dv = dkv + C;
    a.dks = a.dvs = 2 * C;
    att_backward(be, a);
}

/* One log-sum-exp per (b, h, query): B*NH*T floats, whatever S; saturates. */
static size_t cu_attention_state_floats(int B, int NH, int T, int S)
{
    (void)S;
    size_t n = 1;
    const size_t f[3] = { (size_t)(B > 0 ? B : 0), (size_t)(NH > 0 ? NH : 0), (size_t)(T > 0 ? T : 0) };
    for (int i = 0; i < 3; i++)
        if (__builtin_mul_overflow(n, f[i], &n))
            return SIZE_MAX;
    return n;
}

void nb_cuda_register_attention(nb_backend_i *i)
{
    i->attention_fwd = cu_attention_fwd;
    i->attention_bwd = cu_attention_bwd;
    i->xattn_fwd = cu_xattn_fwd;
    i->xattn_bwd = cu_xattn_bwd;
    i->attention_state_floats = cu_attention_state_floats;
}
