/*
 * nccl_emu.cc - the host emulation of NCCL declared in nccl_emu.h: cliques
 * of communicators, collectives matched by their order on each rank, groups
 * that issue the calls of several ranks from one thread, and the
 * all-reduce's rank-order sum over host memory (the emulated device's).
 *
 * Environment:
 *   NB_NCCL_EMU_TIMEOUT=S  seconds a rank waits for the others before the
 *                          call fails with ncclSystemError (default 120);
 *   NB_NCCL_EMU_FAIL=1     while set, every collective fails with
 *                          ncclSystemError, as when a peer or a device is
 *                          lost (read at each call: a test sets it for a
 *                          while).
 */
#include "tests/cuda_emu/nccl_emu.h"

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The emulated stream (cuda_emu.cc): the device it was created on. The same
 * definition as there; read here to check a collective's stream. */
struct nb_emu_stream {
    int device;
};

namespace {

struct coll {
    size_t count = 0;
    ncclDataType_t type = ncclFloat;
    ncclRedOp_t op = ncclSum;
    int posted = 0, collected = 0;
    bool done = false;
    ncclResult_t rc = ncclSuccess;
    std::vector<const void *> send;
    std::vector<void *> recv;
};

struct clique {
    std::string key; /* its unique id while in the registry */
    int nranks = 0;
    int joined = 0; /* ranks that have joined */
    int alive = 0;  /* communicators not yet destroyed */
    std::vector<int> devices; /* by rank; -1 until joined */
    std::map<unsigned long long, coll> pending; /* by sequence number */
    std::mutex mu;
    std::condition_variable cv;
};

std::mutex registry_mu;
std::map<std::string, clique *> registry; /* unique id -> clique still being joined */

std::chrono::seconds timeout()
{
    static long s = [] {
        const char *e = getenv("NB_NCCL_EMU_TIMEOUT");
        long v = e ? atol(e) : 120;
        return v > 0 ? v : 120;
    }();
    return std::chrono::seconds(s);
}

/* An operation recorded inside a group, issued by the outermost
 * ncclGroupEnd. */
struct deferred {
    bool init; /* a join (ncclCommInitRank), else a collective */
    ncclComm_t comm;
    ncclUniqueId id;
    const void *send;
    void *recv;
    size_t count;
    ncclDataType_t type;
    ncclRedOp_t op;
    unsigned long long seq; /* of the collective, once issued */
};

thread_local int group_depth = 0;
thread_local std::vector<deferred> group_ops;
thread_local ncclResult_t group_error = ncclSuccess;

} // namespace

struct ncclComm {
    clique *c;
    int rank;
    int device;
    unsigned long long seq; /* collectives issued */
};

/* ---- joining ---------------------------------------------------------------- */

static ncclResult_t join(ncclComm_t comm, const ncclUniqueId &id, int nranks)
{
    std::string key(id.internal, sizeof id.internal);
    std::lock_guard<std::mutex> g(registry_mu);
    clique *c;
    auto it = registry.find(key);
    if (it == registry.end()) {
        c = new clique;
        c->key = key;
        c->nranks = nranks;
        c->devices.assign((size_t)nranks, -1);
        registry[key] = c;
    } else {
        c = it->second;
    }
    std::lock_guard<std::mutex> cg(c->mu);
    if (c->nranks != nranks || c->devices[(size_t)comm->rank] != -1)
        return ncclInvalidUsage;
    for (int d : c->devices)
        if (d == comm->device)
            return ncclInvalidUsage; /* NCCL: "Duplicate GPU detected" */
    c->devices[(size_t)comm->rank] = comm->device;
    comm->c = c;
    c->joined++;
    c->alive++;
    if (c->joined == c->nranks)
        registry.erase(key); /* complete: the id is used up */
    c->cv.notify_all();
    return ncclSuccess;
}

static ncclResult_t wait_joined(ncclComm_t comm)
{
    clique *c = comm->c;
    std::unique_lock<std::mutex> l(c->mu);
    if (!c->cv.wait_for(l, timeout(), [c] { return c->joined == c->nranks; }))
        return ncclSystemError;
    return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId)
{
    static std::mutex mu;
    static unsigned long long counter = 0;
    if (!uniqueId)
        return ncclInvalidArgument;
    std::lock_guard<std::mutex> g(mu);
    memset(uniqueId, 0, sizeof *uniqueId);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(uniqueId->internal, sizeof uniqueId->internal, "nccl-emu:%ld:%lld:%ld", (long)getpid(),
             ++counter, (long)ts.tv_nsec);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank)
{
    if (!comm || nranks < 1 || rank < 0 || rank >= nranks)
        return ncclInvalidArgument;
    int dev = 0;
    cudaGetDevice(&dev);
    ncclComm_t c = new ncclComm{ nullptr, rank, dev, 0 };
    *comm = c;
    if (group_depth > 0) {
        deferred d{};
        d.init = true;
        d.comm = c;
        d.id = commId;
        d.count = (size_t)nranks;
        group_ops.push_back(d);
        return ncclSuccess;
    }
    ncclResult_t rc = join(c, commId, nranks);
    if (rc == ncclSuccess)
        rc = wait_joined(c);
    return rc;
}

ncclResult_t ncclCommInitAll(ncclComm_t *comms, int ndev, const int *devlist)
{
    int count = 0;
    cudaGetDeviceCount(&count);
    if (!comms || ndev < 1)
        return ncclInvalidArgument;
    for (int i = 0; i < ndev; i++) {
        int d = devlist ? devlist[i] : i;
        if (d < 0 || d >= count)
            return ncclInvalidArgument; /* NCCL: invalid device */
        for (int j = 0; j < i; j++)
            if ((devlist ? devlist[j] : j) == d)
                return ncclInvalidUsage; /* NCCL: "Duplicate GPU detected" */
    }
    clique *c = new clique;
    c->nranks = ndev;
    c->joined = c->alive = ndev;
    for (int i = 0; i < ndev; i++) {
        int d = devlist ? devlist[i] : i;
        c->devices.push_back(d);
        comms[i] = new ncclComm{ c, i, d, 0 };
    }
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm)
{
    if (!comm)
        return ncclSuccess;
    clique *c = comm->c;
    delete comm;
    if (!c)
        return ncclSuccess; /* never joined (its group failed) */
    std::lock_guard<std::mutex> r(registry_mu);
    bool last;
    {
        std::lock_guard<std::mutex> g(c->mu);
        last = --c->alive == 0;
    }
    if (last) { /* a clique never completed leaves the registry with its last rank */
        auto it = registry.find(c->key);
        if (it != registry.end() && it->second == c)
            registry.erase(it);
        delete c;
    }
    return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int *count)
{
    if (!comm || !comm->c || !count)
        return ncclInvalidArgument;
    *count = comm->c->nranks;
    return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int *device)
{
    if (!comm || !device)
        return ncclInvalidArgument;
    *device = comm->device;
    return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank)
{
    if (!comm || !rank)
        return ncclInvalidArgument;
    *rank = comm->rank;
    return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t r)
{
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
    }
}

/* ---- collectives ------------------------------------------------------------- */

/* The sum of every element over the ranks, in rank order, to every rank. */
static void run_sum(coll &k, int nranks)
{
    for (size_t i = 0; i < k.count; i++) {
        float acc = ((const float *)k.send[0])[i];
        for (int r = 1; r < nranks; r++)
            acc += ((const float *)k.send[(size_t)r])[i];
        for (int r = 0; r < nranks; r++)
            ((float *)k.recv[(size_t)r])[i] = acc;
    }
}

/* Records comm's next collective; the last rank to post one runs it. */
static unsigned long long post(ncclComm_t comm, const void *send, void *recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op)
{
    clique *c = comm->c;
    std::lock_guard<std::mutex> g(c->mu);
    unsigned long long seq = comm->seq++;
    coll &k = c->pending[seq];
    if (k.posted == 0) {
        k.count = count;
        k.type = type;
        k.op = op;
        k.send.assign((size_t)c->nranks, nullptr);
        k.recv.assign((size_t)c->nranks, nullptr);
    } else if (k.count != count || k.type != type || k.op != op) {
        k.rc = ncclInvalidUsage; /* the ranks disagree about the k-th call */
    }
    k.send[(size_t)comm->rank] = send;
    k.recv[(size_t)comm->rank] = recv;
    const char *fail = getenv("NB_NCCL_EMU_FAIL");
    if (fail && fail[0] == '1')
        k.rc = ncclSystemError;
    if (++k.posted == c->nranks) {
        if (k.rc == ncclSuccess)
            run_sum(k, c->nranks);
        k.done = true;
        c->cv.notify_all();
    }
    return seq;
}

/* Waits for comm's collective seq to complete; the last rank to collect
 * its result forgets it. */
static ncclResult_t collect(ncclComm_t comm, unsigned long long seq)
{
    clique *c = comm->c;
    std::unique_lock<std::mutex> l(c->mu);
    coll &k = c->pending[seq];
    if (!c->cv.wait_for(l, timeout(), [&k] { return k.done; }))
        return ncclSystemError; /* a rank never called it */
    ncclResult_t rc = k.rc;
    if (++k.collected == c->nranks)
        c->pending.erase(seq);
    return rc;
}

static ncclResult_t check_args(const void *send, void *recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t stream)
{
    if (!comm || !comm->c || type != ncclFloat || op != ncclSum)
        return ncclInvalidArgument;
    if (count && (!send || !recv))
        return ncclInvalidArgument;
    if (stream && stream->device != comm->device)
        return ncclInvalidArgument; /* a stream of another device */
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream)
{
    if (group_depth > 0 && comm && !comm->c) {
        /* joined by this group's end: check what can be checked now */
        if (datatype != ncclFloat || op != ncclSum || (count && (!sendbuff || !recvbuff)) ||
            (stream && stream->device != comm->device))
            return group_error = ncclInvalidArgument;
    } else {
        ncclResult_t rc = check_args(sendbuff, recvbuff, count, datatype, op, comm, stream);
        if (rc != ncclSuccess)
            return group_depth > 0 ? (group_error = rc) : rc;
    }
    if (group_depth > 0) {
        deferred d{};
        d.comm = comm;
        d.send = sendbuff;
        d.recv = recvbuff;
        d.count = count;
        d.type = datatype;
        d.op = op;
        group_ops.push_back(d);
        return ncclSuccess;
    }
    return collect(comm, post(comm, sendbuff, recvbuff, count, datatype, op));
}

ncclResult_t ncclGroupStart(void)
{
    if (group_depth++ == 0) {
        group_ops.clear();
        group_error = ncclSuccess;
    }
    return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void)
{
    if (group_depth <= 0)
        return ncclInvalidUsage;
    if (--group_depth > 0)
        return ncclSuccess;
    std::vector<deferred> ops;
    ops.swap(group_ops);
    ncclResult_t rc = group_error;
    group_error = ncclSuccess;
    if (rc != ncclSuccess)
        return rc; /* an invalid call in the group: nothing is issued */
    /* Issue everything first, then wait: the calls of several ranks from
     * this one thread complete together. */
    for (deferred &d : ops) {
        ncclResult_t r = d.init ? join(d.comm, d.id, (int)d.count) : ncclSuccess;
        if (r != ncclSuccess && rc == ncclSuccess)
            rc = r;
    }
    if (rc != ncclSuccess)
        return rc;
    for (deferred &d : ops)
        if (!d.init)
            d.seq = post(d.comm, d.send, d.recv, d.count, d.type, d.op);
    for (deferred &d : ops) {
        ncclResult_t r = d.init ? wait_joined(d.comm) : collect(d.comm, d.seq);
        if (r != ncclSuccess && rc == ncclSuccess)
            rc = r;
    }
    return rc;
}
