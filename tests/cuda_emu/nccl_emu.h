/*
 * nccl_emu.h - a host emulation of the subset of NCCL that the CUDA backend's
 * all-reduce engine (kernels/cuda/cuda_nccl.cu) uses, for the emulated CUDA
 * device (cuda_emu.h; docs/cuda.md, "Emulated device"). Included through
 * kernels/cuda/cuda_common.cuh in the NB_CUDA_EMU build, in place of
 * <nccl.h>; the names, types and values are NCCL's.
 *
 * Semantics kept from NCCL:
 *  - A communicator is one rank of a clique of nranks ranks, each on its own
 *    device. ncclCommInitAll makes a whole clique in one call (devices
 *    distinct and valid, as NCCL checks: a device listed twice is
 *    ncclInvalidUsage). ncclCommInitRank joins the clique of a unique id
 *    (ncclGetUniqueId) on the calling thread's current device and, outside a
 *    group, blocks until every rank has joined.
 *  - A collective completes when every rank of its clique has called it:
 *    the k-th collective of each rank is matched with the k-th of the
 *    others (same count, type and operation, or ncclInvalidUsage). Outside
 *    a group a call blocks until then (one thread per rank). Between
 *    ncclGroupStart and the outermost ncclGroupEnd the calls are only
 *    recorded; ncclGroupEnd issues them all and returns when they have all
 *    completed, so one thread may issue the calls of every rank.
 *  - ncclAllReduce with ncclFloat and ncclSum: every element is summed in
 *    rank order (rank 0 + rank 1 + ...) in float and written to every
 *    rank's recvbuff; in place (sendbuff == recvbuff) is allowed. The stream
 *    must belong to the communicator's device (ncclInvalidArgument). Other
 *    types and operations are ncclInvalidArgument (not emulated).
 *  - A rank that never comes is reported as ncclSystemError after
 *    NB_NCCL_EMU_TIMEOUT seconds (default 120) instead of a hang; with
 *    NB_NCCL_EMU_FAIL=1 every collective fails with ncclSystemError (a lost
 *    peer or device, for the tests of what follows).
 * Thread: any; calls on one communicator from one thread at a time, as in
 * NCCL.
 */
#ifndef NB_NCCL_EMU_H
#define NB_NCCL_EMU_H

#include <stddef.h>
#include "tests/cuda_emu/cuda_emu.h"

#define NCCL_MAJOR 2
#define NCCL_MINOR 28
#define NCCL_PATCH 0

typedef struct ncclComm *ncclComm_t;

#define NCCL_UNIQUE_ID_BYTES 128
typedef struct {
    char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7,
    ncclNumResults = 8
} ncclResult_t;

typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 } ncclRedOp_t;

typedef enum {
    ncclInt8 = 0, ncclChar = 0,
    ncclUint8 = 1,
    ncclInt32 = 2, ncclInt = 2,
    ncclUint32 = 3,
    ncclInt64 = 4,
    ncclUint64 = 5,
    ncclFloat16 = 6, ncclHalf = 6,
    ncclFloat32 = 7, ncclFloat = 7,
    ncclFloat64 = 8, ncclDouble = 8
} ncclDataType_t;

ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId);
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank);
ncclResult_t ncclCommInitAll(ncclComm_t *comm, int ndev, const int *devlist);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommCount(const ncclComm_t comm, int *count);
ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int *device);
ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank);
const char *ncclGetErrorString(ncclResult_t result);
ncclResult_t ncclGroupStart(void);
ncclResult_t ncclGroupEnd(void);
ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);

#endif /* NB_NCCL_EMU_H */
