/*
 * cuda_codec.cu - the codec primitives on the device (kernels/codec/codec_ops.h).
 */
#include "kernels/cuda/cuda_common.cuh"

void nb_cuda_register_codec(nb_backend_i *i)
{
    (void)i;
}
