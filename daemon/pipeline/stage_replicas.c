/*
 * stage_replicas.c - a pipeline stage as R replicas on R devices of one
 * daemon: batch split, one thread per replica, gather, gradient all-reduce
 * and the optimizer step on every replica (see stage_replicas.h).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/pipeline/replica_reduce.h"
#include "daemon/pipeline/stage_replicas.h"
#include "kernels/allreduce.h"
#include "kernels/cpu_level.h"

typedef struct {
    nb_reps_t *s;
    int r;
} rep_hook_t;

struct nb_reps {
    int R;
    nb_part_t **parts;      /* R; [0] borrowed */
    nb_optim_t **optims;    /* R; [0] borrowed */
    nb_backend_t **bes;     /* R, borrowed */
    nb_reduce_t *engine;    /* R > 1 */
    int C, Cin, Cout; /* d_model; the input and output widths (a low-rank cut: r) */
    bool embed, head;
    /* The all-reduce overlapped with the step's last backward: each
     * replica reports how far its gradients are complete (a suffix of the
     * buffer, as backward runs from the head down); the range every
     * replica has completed is reduced by the replica whose report
     * completed it, while the others go on. */
    float *gbuf[NB_REPS_MAX];  /* each replica's flat gradients */
    size_t n;                  /* floats in them */
    size_t floor;              /* never reduced early: [0, floor) (a tied head adds to wte later) */
    pthread_mutex_t mu;
    bool mu_init;
    bool blas_shared;          /* nb_cpu_blas_share(R) ran: undo it when freed */
    /* CUDA replicas: replica r > 0 cannot read replica 0's memory, so its
     * shard of an input or of dout is copied to a buffer on its device
     * first (grown on demand, on replica r's backend). */
    bool staged;
    void *stage[NB_REPS_MAX];
    size_t stage_bytes[NB_REPS_MAX];
    size_t reported[NB_REPS_MAX]; /* per replica: [reported, n) complete; under mu */
    size_t reduced_from;       /* [reduced_from, n) reduced this step; under mu */
    size_t overlapped;         /* floats reduced during the last backward of the last step */
    int reduce_rc;             /* the first error of an early reduction; under mu */
    char reduce_err[192];      /* and the engine's message for it */
    rep_hook_t hooks[NB_REPS_MAX];
};

struct nb_reps_acts {
    nb_reps_t *s;
    int B, T;
    nb_part_acts_t **a;     /* R: replica r's shard */
    float *out;             /* (B,T,C) gathered output on bes[0]; R > 1, no head */
    float *dinput;          /* (B,T,C) gathered input gradient; R > 1, no embedding */
    size_t bytes;
};

void nb_reps_shard(int B, int R, int r, int *first, int *count)
{
    int base = B / R, extra = B % R;
    *count = base + (r < extra ? 1 : 0);
    *first = r * base + (r < extra ? r : extra);
}

/* ---- running every replica at once ---------------------------------------- */

typedef int (*rep_fn)(nb_reps_t *s, int r, void *arg);

typedef struct {
    nb_reps_t *s;
    int r;
    rep_fn fn;
    void *arg;
    int rc;
} rep_job_t;

/* Makes be's device current on the calling thread before it runs be's
 * ops: the CUDA runtime keeps the current device per thread, and a kernel
 * launched on a stream of another device fails. The CPU backend needs
 * nothing. */
static int bind_to(nb_backend_t *be)
{
    return be->iface->kind == NB_DEV_CUDA ? nb_cuda_make_current(be) : 0;
}

static void *rep_thread(void *p)
{
    rep_job_t *j = p;
    int rc = bind_to(j->s->bes[j->r]);
    j->rc = rc ? rc : j->fn(j->s, j->r, j->arg);
    return NULL;
}

/* Runs fn(s, r, arg) for every replica: r = 0 on this thread, the others on
 * threads of their own, all joined before it returns. A thread that cannot
 * be started runs its replica here afterwards (slower, same result).
 * rcs[r] gets each replica's result; returns the first non-zero one. */
static int run_all(nb_reps_t *s, rep_fn fn, void *arg, int *rcs)
{
    rep_job_t jobs[NB_REPS_MAX];
    pthread_t th[NB_REPS_MAX];
    bool started[NB_REPS_MAX];
    for (int r = 0; r < s->R; r++) {
        jobs[r] = (rep_job_t){ s, r, fn, arg, 0 };
        started[r] = r > 0 && pthread_create(&th[r], NULL, rep_thread, &jobs[r]) == 0;
    }
    jobs[0].rc = fn(s, 0, arg);
    for (int r = 1; r < s->R; r++) {
        if (started[r])
            pthread_join(th[r], NULL);
        else if (!(jobs[r].rc = bind_to(s->bes[r])))
            jobs[r].rc = fn(s, r, arg);
    }
    if (s->R > 1)
        (void)bind_to(s->bes[0]); /* the caller's thread works on replica 0 */
    int rc = 0;
    for (int r = 0; r < s->R; r++) {
        rcs[r] = jobs[r].rc;
        if (jobs[r].rc && !rc)
            rc = jobs[r].rc;
    }
    return rc;
}

/* ---- the set ----------------------------------------------------------------- */

/* Freezes what part0 freezes in replica p, then makes its optimizer over
 * the trainable tensors (kernels/model.h, "frozen tensors"). */
static int make_optim(nb_part_t *part0, nb_part_t *p, const nb_optim_config_t *oc, nb_optim_t **out)
{
    int nt = nb_part_num_tensors(p);
    bool *frozen = calloc((size_t)(nt ? nt : 1), sizeof *frozen);
    if (!frozen)
        return NB_ENOMEM;
    for (int i = 0; i < nt; i++)
        frozen[i] = !nb_part_tensor(part0, i)->trainable;
    int rc = nb_part_set_frozen(p, frozen);
    free(frozen);
    return rc ? rc : nb_part_optim_new(p, oc, out);
}

/* Copies bytes from src on sbe to dst on dbe: directly between CPU
 * backends, through a host buffer otherwise. */
static int copy_between(nb_backend_t *dbe, void *dst, nb_backend_t *sbe, const void *src, size_t bytes)
{
    if (dbe->iface->kind == NB_DEV_CPU && sbe->iface->kind == NB_DEV_CPU) {
        memcpy(dst, src, bytes);
        return 0;
    }
    void *tmp = malloc(bytes ? bytes : 1);
    if (!tmp)
        return NB_ENOMEM;
    nb_be_to_host(sbe, tmp, src, bytes);
    nb_be_from_host(dbe, dst, tmp, bytes);
    nb_be_sync(dbe);
    free(tmp);
    return 0;
}

int nb_reps_sync(nb_reps_t *s)
{
    nb_part_t *p0 = s->parts[0];
    size_t bytes = nb_part_num_params(p0) * sizeof(float);
    size_t sbytes = nb_optim_numel(s->optims[0]) * sizeof(float); /* the trainable tensors' state */
    nb_be_sync(s->bes[0]);
    for (int r = 1; r < s->R; r++) {
        int rc;
        if ((rc = copy_between(s->bes[r], nb_part_params(s->parts[r]), s->bes[0], nb_part_params(p0), bytes)) ||
            (rc = copy_between(s->bes[r], nb_optim_m(s->optims[r]), s->bes[0], nb_optim_m(s->optims[0]), sbytes)) ||
            (rc = copy_between(s->bes[r], nb_optim_v(s->optims[r]), s->bes[0], nb_optim_v(s->optims[0]), sbytes)))
            return rc;
        nb_optim_set_steps(s->optims[r], nb_optim_steps(s->optims[0]));
        (void)bind_to(s->bes[r]);
        nb_part_zero_grad(s->parts[r]);
        nb_be_sync(s->bes[r]);
        (void)bind_to(s->bes[0]);
    }
    return 0;
}

int nb_reps_new(nb_part_t *part0, nb_optim_t *optim0, nb_backend_t *const *bes, int R,
                const nb_optim_config_t *oc, uint64_t seed, nb_reps_t *tie, nb_reps_t **out,
                char *err, size_t errlen)
{
    *out = NULL;
    if (R < 1 || R > NB_REPS_MAX || bes[0] != nb_part_backend(part0) || (tie && tie->R != R)) {
        snprintf(err, errlen, "replicas: %d devices (1 to %d allowed)", R, NB_REPS_MAX);
        return NB_EINVAL;
    }
    nb_reps_t *s = calloc(1, sizeof *s);
    if (!s)
        return NB_ENOMEM;
    s->R = R;
    s->C = nb_part_config(part0)->d_model;
    s->Cin = nb_part_in_width(part0);
    s->Cout = nb_part_out_width(part0);
    s->embed = nb_part_spec(part0)->embed;
    s->head = nb_part_spec(part0)->head;
    int rc = NB_ENOMEM;
    if (!(s->parts = calloc((size_t)R, sizeof *s->parts)) || !(s->optims = calloc((size_t)R, sizeof *s->optims)) ||
        !(s->bes = calloc((size_t)R, sizeof *s->bes)))
        goto oom;
    s->parts[0] = part0;
    s->optims[0] = optim0;
    if (pthread_mutex_init(&s->mu, NULL) != 0)
        goto oom;
    s->mu_init = true;
    for (int r = 0; r < R; r++)
        s->bes[r] = bes[r];
    if (R > 1) {
        const char *why = NULL;
        if (!(s->engine = nb_reduce_new(bes, R, &why))) {
            snprintf(err, errlen, "replicas: %s", why);
            rc = strcmp(why, "out of memory") == 0 ? NB_ENOMEM : NB_EINVAL;
            goto fail;
        }
    }
    for (int r = 1; r < R; r++) {
        if ((rc = bind_to(bes[r]))) {
            snprintf(err, errlen, "replica %d: cannot make its CUDA device current", r);
            goto fail;
        }
        rc = nb_part_new(bes[r], nb_part_config(part0), nb_part_spec(part0), seed, tie ? tie->parts[r] : NULL,
                         &s->parts[r], err, errlen);
        if (rc == 0 && (rc = make_optim(part0, s->parts[r], oc, &s->optims[r])))
            snprintf(err, errlen, "replica %d: cannot create the optimizer (%s)", r, nb_strerror(rc));
        (void)bind_to(bes[0]);
        if (rc)
            goto fail;
    }
    s->staged = R > 1 && bes[0]->iface->kind != NB_DEV_CPU;
    if ((rc = nb_reps_sync(s)))
        goto oom;
    s->n = nb_part_num_grads(part0); /* the gradient buffer: trainable tensors only */
    s->reduced_from = s->n;
    for (int r = 0; r < R; r++) {
        s->gbuf[r] = nb_part_grads(s->parts[r]); /* nothing pending yet: no fold */
        s->hooks[r] = (rep_hook_t){ s, r };
    }

    if (R > 1 && bes[0]->iface->kind == NB_DEV_CPU) {
        nb_cpu_blas_share(R);
        s->blas_shared = true;
    }
    *out = s;
    return 0;
oom:
    snprintf(err, errlen, "out of memory for %d replicas", R);
    rc = NB_ENOMEM;
fail:
    nb_reps_free(s);
    return rc;
}

void nb_reps_free(nb_reps_t *s)
{
    if (!s)
        return;
    if (s->blas_shared)
        nb_cpu_blas_share(1);
    for (int r = s->R - 1; r >= 1; r--) {
        if (s->bes && s->bes[r])
            (void)bind_to(s->bes[r]);
        if (s->stage[r])
            nb_be_dealloc(s->bes[r], s->stage[r]);
        if (s->optims)
            nb_optim_free(s->optims[r]);
        if (s->parts)
            nb_part_free(s->parts[r]);
    }
    if (s->R > 1 && s->bes && s->bes[0])
        (void)bind_to(s->bes[0]);
    nb_reduce_free(s->engine);
    if (s->mu_init)
        pthread_mutex_destroy(&s->mu);
    free(s->parts);
    free(s->optims);
    free(s->bes);
    free(s);
}

int nb_reps_count(const nb_reps_t *s) { return s->R; }
nb_part_t *nb_reps_part(nb_reps_t *s, int r) { return s->parts[r]; }
nb_optim_t *nb_reps_optim(nb_reps_t *s, int r) { return s->optims[r]; }

/* ---- activations --------------------------------------------------------------- */

int nb_reps_acts_new(nb_reps_t *s, int B, int T, nb_reps_acts_t **out)
{
    *out = NULL;
    if (B < s->R)
        return NB_EINVAL;
    nb_reps_acts_t *a = calloc(1, sizeof *a);
    if (!a || !(a->a = calloc((size_t)s->R, sizeof *a->a))) {
        free(a);
        return NB_ENOMEM;
    }
    a->s = s;
    a->B = B;
    a->T = T;
    int rc = 0;
    for (int r = 0; r < s->R && rc == 0; r++) {
        int first, count;
        nb_reps_shard(B, s->R, r, &first, &count);
        (void)bind_to(s->bes[r]);
        if ((rc = nb_part_acts_new(s->parts[r], count, T, &a->a[r])) == 0)
            a->bytes += nb_part_acts_bytes(a->a[r]);
    }
    if (s->R > 1)
        (void)bind_to(s->bes[0]);
    size_t full = (size_t)B * (size_t)T * (size_t)s->C * sizeof(float);
    if (rc == 0 && s->R > 1 && !s->head) {
        if ((a->out = nb_be_alloc(s->bes[0], full)))
            a->bytes += full;
        else
            rc = NB_ENOMEM;
    }
    if (rc == 0 && s->R > 1 && !s->embed) {
        if ((a->dinput = nb_be_alloc(s->bes[0], full)))
            a->bytes += full;
        else
            rc = NB_ENOMEM;
    }
    if (rc) {
        nb_reps_acts_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

void nb_reps_acts_free(nb_reps_acts_t *a)
{
    if (!a)
        return;
    for (int r = 0; r < a->s->R; r++) {
        (void)bind_to(a->s->bes[r]);
        nb_part_acts_free(a->a[r]);
    }
    if (a->s->R > 1)
        (void)bind_to(a->s->bes[0]);
    if (a->out)
        nb_be_dealloc(a->s->bes[0], a->out);
    if (a->dinput)
        nb_be_dealloc(a->s->bes[0], a->dinput);
    free(a->a);
    free(a);
}

size_t nb_reps_acts_bytes(const nb_reps_acts_t *a) { return a->bytes; }

const float *nb_reps_acts_output(const nb_reps_acts_t *a)
{
    return a->out ? a->out : nb_part_acts_output(a->a[0]);
}

const float *nb_reps_acts_dinput(const nb_reps_acts_t *a)
{
    return a->dinput ? a->dinput : nb_part_acts_dinput(a->a[0]);
}

/* ---- forward and backward ---------------------------------------------------------- */

typedef struct {
    nb_reps_acts_t *a;
    const nb_part_input_t *in;
    const float *dout;
    float loss[NB_REPS_MAX];
} pass_arg_t;

/* Replica r's rows of a (B, T, width) tensor that starts at base. */
#define SHARD(base, first, T, width) ((base) ? (base) + (size_t)(first) * (size_t)(T) * (size_t)(width) : NULL)

/* Bytes of a staged piece, rounded so the next one stays aligned. */
static size_t stage_round(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

/* Makes replica r's staging buffer hold at least bytes (staged sets, r > 0;
 * else nothing). A buffer grown replaces the old one in stream order. */
static int stage_reserve(nb_reps_t *s, int r, size_t bytes)
{
    if (!s->staged || r == 0 || bytes <= s->stage_bytes[r])
        return 0;
    if (s->stage[r])
        nb_be_dealloc(s->bes[r], s->stage[r]);
    s->stage_bytes[r] = 0;
    if (!(s->stage[r] = nb_be_alloc(s->bes[r], bytes)))
        return NB_ENOMEM;
    s->stage_bytes[r] = bytes;
    return 0;
}

/* What replica r reads for the bytes at src in replica 0's memory: src
 * itself for CPU replicas and replica 0, else a copy at *off in its staging
 * buffer (enqueued on its stream, after the caller synchronised replica 0).
 * NULL stays NULL. */
static const void *stage_in(nb_reps_t *s, int r, const void *src, size_t bytes, size_t *off)
{
    if (!src || !s->staged || r == 0)
        return src;
    char *dst = (char *)s->stage[r] + *off;
    nb_be_copy(s->bes[r], dst, src, bytes);
    *off += stage_round(bytes);
    return dst;
}

static int fwd_one(nb_reps_t *s, int r, void *p)
{
    pass_arg_t *x = p;
    nb_reps_acts_t *a = x->a;
    int first, count, T = a->T;
    nb_reps_shard(a->B, s->R, r, &first, &count);
    nb_part_input_t in = *x->in;
    size_t rows = (size_t)count * (size_t)T, off = 0;
    int rc = stage_reserve(s, r, stage_round(rows * 4) * 3 + stage_round(rows * s->Cin * sizeof(float)));
    if (rc)
        return rc;
    in.tokens = stage_in(s, r, SHARD(x->in->tokens, first, T, 1), rows * sizeof(int32_t), &off);
    in.x = stage_in(s, r, SHARD(x->in->x, first, T, s->Cin), rows * s->Cin * sizeof(float), &off);
    in.key_mask = stage_in(s, r, SHARD(x->in->key_mask, first, T, 1), rows, &off);
    in.targets = stage_in(s, r, SHARD(x->in->targets, first, T, 1), rows * sizeof(int32_t), &off);
    rc = nb_part_forward(s->parts[r], a->a[r], &in, &x->loss[r]);
    if (rc == 0 && a->out) /* gather: replica r's rows of the stage's output */
        rc = copy_between(s->bes[0], a->out + (size_t)first * T * s->Cout, s->bes[r],
                          nb_part_acts_output(a->a[r]), (size_t)count * T * s->Cout * sizeof(float));
    nb_be_sync(s->bes[r]);
    return rc;
}

static int bwd_one(nb_reps_t *s, int r, void *p)
{
    pass_arg_t *x = p;
    nb_reps_acts_t *a = x->a;
    int first, count, T = a->T;
    nb_reps_shard(a->B, s->R, r, &first, &count);
    size_t bytes = (size_t)count * T * s->Cout * sizeof(float), off = 0;
    int rc = x->dout ? stage_reserve(s, r, bytes) : 0;
    if (rc)
        return rc;
    rc = nb_part_backward(s->parts[r], a->a[r], stage_in(s, r, SHARD(x->dout, first, T, s->Cout), bytes, &off));
    if (rc == 0 && a->dinput)
        rc = copy_between(s->bes[0], a->dinput + (size_t)first * T * s->Cin, s->bes[r],
                          nb_part_acts_dinput(a->a[r]), (size_t)count * T * s->Cin * sizeof(float));
    nb_be_sync(s->bes[r]);
    return rc;
}

static void name_failure(nb_reps_t *s, const int *rcs, const char *what, char *err, size_t errlen)
{
    for (int r = 0; r < s->R; r++)
        if (rcs[r]) {
            snprintf(err, errlen, "%s failed on replica %d of %d (%s)", what, r, s->R, nb_strerror(rcs[r]));
            return;
        }
}

int nb_reps_forward(nb_reps_t *s, nb_reps_acts_t *a, const nb_part_input_t *in, float *loss,
                    char *err, size_t errlen)
{
    NB_CHECK(a->s == s);
    if (s->R == 1) {
        int rc = nb_part_forward(s->parts[0], a->a[0], in, loss);
        if (rc)
            snprintf(err, errlen, "forward failed (%s)", nb_strerror(rc));
        return rc;
    }
    if (s->head && in->targets && in->loss_count <= 0) {
        snprintf(err, errlen, "forward: a head split across replicas needs the micro-batch's target count");
        return NB_EINVAL;
    }
    pass_arg_t x = { .a = a, .in = in };
    int rcs[NB_REPS_MAX];
    if (s->staged) /* the other devices copy their shards from replica 0's memory */
        nb_be_sync(s->bes[0]);
    int rc = run_all(s, fwd_one, &x, rcs);
    if (rc) {
        name_failure(s, rcs, "forward", err, errlen);
        return rc;
    }
    if (loss) { /* each share is its shard's sum over the whole count */
        double sum = 0.0;
        for (int r = 0; r < s->R; r++)
            sum += x.loss[r];
        *loss = (float)sum;
    }
    return 0;
}

/* nb_part_grad_ready_cb of replica k->r during the step's last backward. */
static void on_grad_ready(void *ud, size_t offset)
{
    rep_hook_t *k = ud;
    nb_reps_t *s = k->s;
    nb_be_sync(s->bes[k->r]);
    if (offset < s->floor)
        offset = s->floor;
    pthread_mutex_lock(&s->mu);
    s->reported[k->r] = offset;
    size_t lo = 0, hi = s->reduced_from;
    for (int r = 0; r < s->R; r++)
        if (s->reported[r] > lo)
            lo = s->reported[r];
    if (lo < hi) /* every replica has completed [lo, hi): this thread reduces it */
        s->reduced_from = lo;
    pthread_mutex_unlock(&s->mu);
    if (lo >= hi)
        return;
    float *bufs[NB_REPS_MAX];
    for (int r = 0; r < s->R; r++)
        bufs[r] = s->gbuf[r] + lo;
    char err[sizeof s->reduce_err] = "";
    int rc = nb_reduce_allreduce(s->engine, bufs, hi - lo, err, sizeof err);
    pthread_mutex_lock(&s->mu);
    s->overlapped += hi - lo;
    if (rc && !s->reduce_rc) {
        s->reduce_rc = rc;
        memcpy(s->reduce_err, err, sizeof err);
    }
    pthread_mutex_unlock(&s->mu);
}

int nb_reps_backward(nb_reps_t *s, nb_reps_acts_t *a, const float *dout, bool last, char *err, size_t errlen)
{
    NB_CHECK(a->s == s);
    if (s->reduced_from != s->n) {
        snprintf(err, errlen, "backward after the step's last one (its gradients are being reduced)");
        return NB_ESTATE;
    }
    if (s->R == 1) {
        int rc = nb_part_backward(s->parts[0], a->a[0], dout);
        if (rc)
            snprintf(err, errlen, "backward failed (%s)", nb_strerror(rc));
        return rc;
    }
    pass_arg_t x = { .a = a, .dout = dout };
    int rcs[NB_REPS_MAX];
    if (s->staged && dout)
        nb_be_sync(s->bes[0]);
    if (last) { /* the gradients become final as this backward runs: reduce them on the way */
        s->overlapped = 0;
        s->reduce_rc = 0;
        /* a head tied to this part's wte (built after this set, so asked
         * here) adds its share at the end: wte waits for nb_reps_reduce */
        int wte = nb_part_find_tensor(s->parts[0], "wte");
        const nb_param_info_t *wt = wte >= 0 ? nb_part_tensor(s->parts[0], wte) : NULL;
        s->floor = nb_part_has_tied_head(s->parts[0]) && wt && wt->trainable ? wt->grad_offset + wt->numel : 0;
        for (int r = 0; r < s->R; r++) {
            s->reported[r] = s->n;
            nb_part_set_grad_ready(s->parts[r], on_grad_ready, &s->hooks[r]);
        }
    }
    int rc = run_all(s, bwd_one, &x, rcs);
    if (last)
        for (int r = 0; r < s->R; r++)
            nb_part_set_grad_ready(s->parts[r], NULL, NULL);
    if (rc)
        name_failure(s, rcs, "backward", err, errlen);
    else if (s->reduce_rc) {
        snprintf(err, errlen, "the all-reduce of the gradients failed (%s%s%s)", nb_strerror(s->reduce_rc),
                 s->reduce_err[0] ? ": " : "", s->reduce_err);
        rc = s->reduce_rc;
    }
    return rc;
}

size_t nb_reps_overlapped(const nb_reps_t *s) { return s->overlapped; }

/* ---- gradients and the optimizer ------------------------------------------------------ */

int nb_reps_reduce(nb_reps_t *s, char *err, size_t errlen)
{
    if (s->R == 1)
        return 0;
    /* what the last backward did not reduce on the way: all of it when no
     * backward was marked last, the embedding's wte under a tied head */
    size_t hi = s->reduced_from;
    s->reduced_from = s->n;
    float *bufs[NB_REPS_MAX];
    for (int r = 0; r < s->R; r++) {
        (void)bind_to(s->bes[r]);
        bufs[r] = nb_part_grads(s->parts[r]); /* finishes a tied head's share first */
        NB_CHECK(bufs[r] == s->gbuf[r]);
        nb_be_sync(s->bes[r]);
    }
    (void)bind_to(s->bes[0]);
    int rc = hi ? nb_reduce_allreduce(s->engine, bufs, hi, err, errlen) : 0;
    for (int r = 0; r < s->R; r++)
        nb_be_sync(s->bes[r]);
    return rc;
}

typedef struct {
    float lr, scale;
} step_arg_t;

static int step_one(nb_reps_t *s, int r, void *p)
{
    step_arg_t *x = p;
    nb_optim_step(s->optims[r], nb_part_params(s->parts[r]), nb_part_grads(s->parts[r]), x->lr, x->scale);
    nb_be_sync(s->bes[r]);
    return 0;
}

void nb_reps_step(nb_reps_t *s, float lr, float grad_scale)
{
    step_arg_t x = { lr, grad_scale };
    int rcs[NB_REPS_MAX];
    if (s->R == 1)
        step_one(s, 0, &x);
    else
        (void)run_all(s, step_one, &x, rcs);
}

void nb_reps_zero_grad(nb_reps_t *s)
{
    s->reduced_from = s->n; /* an aborted step's early reductions are void */
    for (int r = 0; r < s->R; r++) {
        (void)bind_to(s->bes[r]);
        nb_part_zero_grad(s->parts[r]);
        nb_be_sync(s->bes[r]);
    }
    if (s->R > 1)
        (void)bind_to(s->bes[0]);
}
