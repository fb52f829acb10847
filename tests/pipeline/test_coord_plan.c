/* test_coord_plan.c - the coordinator's planning glue driven by step
 * reports from a synthetic world whose ground truth is NOT the planner's
 * simulator: an independent discrete-event model of two stage daemons
 * (world_step below) with
 *   - compute jitter (+-5% per op, deterministic), stage 1 1.3x slower;
 *   - a bandwidth-limited link (20 Mbit/s) that also carries a 64-byte frame
 *     header and a 22-byte TLS record header per 16 KiB, plus 0.1 ms of
 *     wire time per message and 1 ms one-way latency;
 *   - a 0.15 ms hand-off per message on the sender's compute thread, which
 *     no report shows (the planner has to find it as a per-message cost);
 *   - codec work of its own (fp16: 0.5 ns/byte to encode, 0.3 to decode,
 *     ratio 0.5 plus 8 bytes), unlike the planner's own calibration;
 *   - 5 ms of commit and optimizer after the longest stage.
 * Checked: the profiling steps run two micro-batch sizes and the compute fit
 * is close to the world's line; every plan's prediction made BEFORE it ran
 * (the planner's out-of-sample figure, as `nebulactl plan` shows it) is
 * within 10% of what the world then measured, 5% on average; the planner's
 * choice is within 5% of the world's best plan; the per-message cost is
 * not fitted from one plan alone; a one-step compute burst does not enter
 * the model, a lasting slowdown does at the re-plan; a link that drops to a
 * fifth re-plans once; pins are checked and obeyed; the JSON reply; a
 * daemon's replicas enter the model and the reply.
 * Run from the repository root. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/pipeline/coord_plan.h"
#include "daemon/pipeline/coord_calib.h"
#include "daemon/planner/plan_config.h"
#include "kernels/codec/codec.h"
#include "kernels/common.h"

static const char *cfg_text =
    "name: coord\n"
    "role: coordinator\n"
    "listen: 127.0.0.1:0\n"
    "tls: {cert: c.pem, key: c.key, ca: ca.pem}\n"
    "job:\n"
    "  model: {n_layer: 4, d_model: 64, n_head: 4, d_ff: 256, vocab: 256, max_seq: 32, tie_embeddings: false}\n"
    "  data: data.tok\n"
    "  batch: 16\n"
    "  seq_len: 32\n"
    "  steps: 1000\n"
    "  micro_batches: auto\n"
    "  schedule: auto\n"
    "  codecs: {forward: fp32, backward: fp32}\n"
    "  clusters:\n"
    "    - {name: a, address: 127.0.0.1:1}\n"
    "    - {name: b, address: 127.0.0.1:2}\n"
    "  planner: {enabled: true, codecs: [fp32, fp16], replan_steps: 3, replan_threshold: 0.2}\n";

#define LINK_BPS 2.5e6    /* 20 Mbit/s on the wire */
#define W_LAT 0.001       /* one way */
#define W_MSG_WIRE 1e-4   /* wire time per message (syscalls, acknowledgements) */
#define W_HANDOFF 1.5e-4  /* sender's compute thread per message, in no report */
#define W_COMMIT 0.005    /* commit + optimizer after the longest stage */
#define W_JITTER 0.05     /* +- per op */
#define BOUNDARY 8192.0   /* raw bytes per sequence: seq 32 x d_model 64 x 4 */

typedef struct {
    nb_config_t cfg;
    nb_job_desc_t desc;
    nb_cplan_t *cp;
    double rx_bps; /* the link's rate this step (the passive estimates say so too) */
    nb_plan_req_t req;
    uint64_t rng;
    double slow; /* compute slowdown this step (another process's burst); 0: none */
    double live_err; /* round-trip error the stages sample of a lossy codec's tensors; 0: none */
} world_t;

/* The world's compute per micro-batch of n sequences (2 blocks a stage). */
static double w_fwd(int st, int n) { return (st ? 1.3 : 1.0) * (0.001 + 0.001 * n); }
static double w_bwd(int st, int n) { return 2 * w_fwd(st, n); }

static double w_rand(world_t *w)
{
    w->rng = w->rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(w->rng >> 11) / 9007199254740992.0;
}

static double jit(world_t *w, bool on)
{
    return (on ? 1 + W_JITTER * (2 * w_rand(w) - 1) : 1) * (w->slow > 0 ? w->slow : 1);
}

/* The world's codecs: wire bytes, encode and decode seconds of raw bytes. */
static void w_codec(const char *spec, double raw, double *wire, double *enc, double *dec)
{
    if (strcmp(spec, "fp16") == 0) {
        *wire = raw / 2 + 8, *enc = 0.5e-9 * raw, *dec = 0.3e-9 * raw;
    } else {
        *wire = raw, *enc = *dec = 0;
    }
}

/* Wire time of one message: payload, frame and TLS record headers, the
 * per-message cost, at rate bps. */
static double w_wire(double bytes, double bps)
{
    double recs = ceil(bytes / 16384.0);
    return (bytes + 64 + 22 * recs) / bps + W_MSG_WIRE;
}

/* The world's op order for stage st of two (written apart from the
 * planner's schedule.c): kind 0 forward, 1 backward. */
static int w_order(const nb_sched_spec_t *sc, int m, int st, int *kind, int *mb)
{
    int k = 0, f = 0, b = 0;
    int warm = sc->kind == NB_SCHED_GPIPE ? m : (st == 0 ? 1 + sc->extra : 0);
    if (warm > m)
        warm = m;
    while (f < warm)
        kind[k] = 0, mb[k++] = f++;
    while (f < m) {
        kind[k] = 0, mb[k++] = f++;
        kind[k] = 1, mb[k++] = b++;
    }
    while (b < m)
        kind[k] = 1, mb[k++] = b++;
    return k;
}

typedef struct {
    double f[2][64], b[2][64], enc[2][64], dec[2][64]; /* what each op reports */
    double end[2];                                     /* each stage's last op */
} w_trace_t;

/* One step of plan ps in the world; returns the longest stage's step. An
 * event loop over two sequential workers: an op starts when its worker is
 * free and its input has arrived; a message leaves when its sender has
 * handed it off and the wire in its direction is free. */
static double world_step(world_t *w, const nb_cplan_step_t *ps, bool jitter, w_trace_t *tr)
{
    int m = ps->m, n = ps->mb_size;
    assert_true(m <= 64);
    int kind[2][128], mb[2][128], len[2], pos[2] = { 0, 0 };
    for (int st = 0; st < 2; st++)
        len[st] = w_order(&ps->sched, m, st, kind[st], mb[st]);
    double raw = n * BOUNDARY, awire, aenc, adec, gwire, genc, gdec;
    w_codec(ps->fwd, raw, &awire, &aenc, &adec);
    w_codec(ps->bwd, raw, &gwire, &genc, &gdec);
    double act_at[64], grad_at[64], free_at[2] = { 0, 0 }, wire_free[2] = { 0, 0 };
    for (int i = 0; i < m; i++)
        act_at[i] = grad_at[i] = -1;
    memset(tr, 0, sizeof *tr);
    while (pos[0] < len[0] || pos[1] < len[1]) {
        int moved = 0;
        for (int st = 0; st < 2; st++) {
            while (pos[st] < len[st]) {
                int k = kind[st][pos[st]], i = mb[st][pos[st]];
                double in = 0, t;
                if (k == 0 && st == 1)
                    in = act_at[i];
                if (k == 1 && st == 0)
                    in = grad_at[i];
                if (in < 0)
                    break;
                double start = fmax(free_at[st], in);
                if (k == 0) {
                    t = w_fwd(st, n) * jit(w, jitter);
                    tr->f[st][i] = t;
                    if (st == 1)
                        t += tr->dec[st][i] = adec; /* decode the activation */
                    else
                        t += tr->enc[st][i] = aenc; /* encode it */
                } else {
                    t = w_bwd(st, n) * jit(w, jitter);
                    tr->b[st][i] = t;
                    if (st == 0)
                        t += gdec, tr->dec[st][i] += gdec;
                    else
                        t += genc, tr->enc[st][i] += genc;
                }
                double end = start + t;
                bool sends = (k == 0 && st == 0) || (k == 1 && st == 1);
                if (sends) {
                    end += W_HANDOFF;
                    int dir = k; /* 0: activations 0 -> 1, 1: gradients 1 -> 0 */
                    double leave = fmax(end, wire_free[dir]);
                    wire_free[dir] = leave + w_wire(dir ? gwire : awire, w->rx_bps);
                    (dir ? grad_at : act_at)[i] = wire_free[dir] + W_LAT;
                }
                free_at[st] = end;
                tr->end[st] = end;
                pos[st]++;
                moved = 1;
            }
        }
        assert_true(moved); /* the world deadlocked: a broken schedule */
    }
    return fmax(tr->end[0], tr->end[1]);
}

static int setup(void **state)
{
    world_t *w = calloc(1, sizeof *w);
    char err[512] = "";
    if (nb_cfg_load_string("coord.yaml", cfg_text, strlen(cfg_text), &w->cfg, err, sizeof err))
        fail_msg("config: %s", err);
    if (nb_job_from_cfg(&w->cfg.job, 4, 77, &w->desc, err, sizeof err))
        fail_msg("job: %s", err);
    if (nb_cplan_new(&w->cfg.job, &w->desc, 4, &w->cp, err, sizeof err))
        fail_msg("planner: %s", err);
    w->rx_bps = LINK_BPS;
    w->rng = 0x5eed;
    if (nb_plan_req_from_config(&w->cfg.job, &w->req, err, sizeof err))
        fail_msg("request: %s", err);
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world_t *w = *state;
    nb_cplan_free(w->cp);
    free(w);
    return 0;
}

/* Payload goodput of the world's link for tensors of n sequences: what a
 * probe or the transport's passive estimate would say. */
static double w_goodput(const world_t *w, int n)
{
    double raw = n * BOUNDARY;
    return raw / (w_wire(raw, w->rx_bps) - W_MSG_WIRE);
}

/* Probes as the stage daemons send them: rtt, 4 MiB of goodput. */
static void probe(world_t *w)
{
    double gp = (4 << 20) / ((4 << 20) * (1 + 22.0 / 16384) / w->rx_bps);
    nb_cplan_link_probe(w->cp, 0, 1, 2e3 * W_LAT, gp);
    nb_cplan_link_probe(w->cp, 1, 0, 2e3 * W_LAT, gp);
}

/* One step of plan ps in the world, with jitter: both daemons report what
 * the world measured, the coordinator closes the step. Returns the
 * coordinator's step time. */
static double run_step(world_t *w, int64_t step, const nb_cplan_step_t *ps)
{
    int m = ps->m;
    w_trace_t tr;
    double T = world_step(w, ps, true, &tr);
    for (int d = 0; d < 2; d++) {
        Nebula__MicroBatchTiming *tm = calloc((size_t)m, sizeof *tm), **tp = calloc((size_t)m, sizeof *tp);
        for (int i = 0; i < m; i++) {
            nebula__micro_batch_timing__init(&tm[i]);
            tm[i].stage = (uint32_t)d;
            tm[i].micro_batch = (uint32_t)i;
            tm[i].forward_ns = (uint64_t)(tr.f[d][i] * 1e9);
            tm[i].backward_ns = (uint64_t)(tr.b[d][i] * 1e9);
            tm[i].encode_ns = (uint64_t)(tr.enc[d][i] * 1e9);
            tm[i].decode_ns = (uint64_t)(tr.dec[d][i] * 1e9);
            if (i == 0 && d == 0 && strcmp(ps->fwd, "fp32"))
                tm[i].act_error = w->live_err;
            if (i == 0 && d == 1 && strcmp(ps->bwd, "fp32"))
                tm[i].grad_error = w->live_err;
            tp[i] = &tm[i];
        }
        Nebula__LinkMeasurement lm = NEBULA__LINK_MEASUREMENT__INIT, *lp = &lm;
        lm.peer = (uint32_t)(1 - d);
        lm.rx_bytes_per_s = w_goodput(w, ps->mb_size);
        Nebula__Report r = NEBULA__REPORT__INIT;
        r.step = (uint64_t)step;
        r.daemon = (uint32_t)d;
        r.n_timings = (size_t)m;
        r.timings = tp;
        r.n_links = 1;
        r.links = &lp;
        r.step_ns = (uint64_t)(tr.end[d] * 1e9);
        nb_cplan_report(w->cp, d, &r);
        free(tm);
        free(tp);
    }
    double wall = T + W_COMMIT * jit(w, true);
    nb_cplan_step_done(w->cp, step, wall, T);
    return wall;
}

/* The world's step for plan ps without jitter, commit included. */
static double world_truth(world_t *w, const nb_cplan_step_t *ps)
{
    w_trace_t tr;
    return world_step(w, ps, false, &tr) + W_COMMIT;
}

static nb_cplan_step_t mkplan(int m, const char *sched, const char *fwd, const char *bwd)
{
    nb_cplan_step_t p = { .m = m, .mb_size = 16 / m };
    assert_int_equal(nb_sched_parse(sched, &p.sched), 0);
    snprintf(p.fwd, sizeof p.fwd, "%s", fwd);
    snprintf(p.bwd, sizeof p.bwd, "%s", bwd);
    return p;
}

static void test_profile_fit_plan(void **state)
{
    world_t *w = *state;
    probe(w);
    nb_cplan_link_probe(w->cp, 5, 0, 2.0, 1); /* out of range: ignored */
    nb_cplan_link_probe(w->cp, 0, 1, NAN, INFINITY); /* a peer's nonsense: ignored */
    nb_cplan_link_probe(w->cp, 1, 0, -1, -5);
    nb_cplan_step_t ps;
    int seen_m[3];
    for (int64_t s = 0; s < 3; s++) {
        assert_int_equal(nb_cplan_plan(w->cp, s, &ps), 0);
        assert_string_equal(ps.why, "profiling");
        assert_true(ps.pred_step_s < 0);
        seen_m[s] = ps.m;
        run_step(w, s, &ps);
    }
    assert_int_equal(seen_m[0], 4);
    assert_int_equal(seen_m[1], 4);
    assert_int_equal(seen_m[2], 8); /* the divisor of 16 nearest 2 m0 */
    /* at the profiled sizes the fit is near the world's line (one step per
     * size, +-5% jitter per op averaged over the micro-batches; beyond them
     * the jitter is extrapolated) */
    const nb_cost_t *c = nb_cplan_cost(w->cp);
    for (int st = 0; st < 2; st++)
        for (int n = 2; n <= 4; n *= 2) {
            assert_true(fabs(nb_cost_fwd(c, st, 2, n) / w_fwd(st, n) - 1) < 0.05);
            assert_true(fabs(nb_cost_bwd(c, st, 2, n) / w_bwd(st, n) - 1) < 0.05);
        }
    assert_true(fabs(c->link[0].dir[NB_DIR_BWD].latency - W_LAT) < 1e-9);
    assert_int_equal(nb_cplan_plan(w->cp, 3, &ps), 0);
    assert_string_equal(ps.why, "planned");
    assert_true(ps.pred_step_s > 0);
    assert_true(ps.pred_bubble >= 0 && ps.pred_bubble < 1);
    assert_int_equal(16 % ps.m, 0);
    assert_int_equal(ps.mb_size * ps.m, 16);
    /* the logged prediction is nb_plan_evaluate's on the same model */
    char err[256];
    int layers[2] = { 2, 2 };
    nb_plan_cand_t ev;
    assert_int_equal(nb_plan_evaluate(c, &w->req.model, ps.m, &ps.sched, ps.fwd, ps.bwd, layers, &ev, err,
                                      sizeof err), 0);
    assert_true(fabs(ev.step_time - ps.pred_step_s) < 1e-12);
    /* one measured plan (m=4; the first step at m=8 is not counted) cannot
     * tell a per-message cost from an error in its own prediction: the cost
     * stays 0 until plans of two micro-batch counts have run */
    assert_true(c->link[0].dir[NB_DIR_FWD].overhead == 0);
    run_step(w, 3, &ps);
    nb_cplan_step_t pin = mkplan(2, "gpipe", "fp32", "fp32");
    assert_int_equal(nb_cplan_pin(w->cp, &pin, err, sizeof err), 0);
    for (int64_t s = 4; s < 7; s++) {
        nb_cplan_plan(w->cp, s, &ps);
        run_step(w, s, &ps);
    }
    /* the status view shows the cost fitted on what ran, and changes nothing */
    json_t *j = nb_cplan_json(w->cp, 1, 0, err, sizeof err);
    assert_non_null(j);
    json_t *lk = json_array_get(json_object_get(json_object_get(j, "measurements"), "links"), 0);
    assert_true(json_real_value(json_object_get(json_object_get(lk, "forward"), "overhead_ms")) > 0);
    json_decref(j);
    assert_true(c->link[0].dir[NB_DIR_FWD].overhead == 0);
    /* the next pin's prediction is made on that fit */
    pin = mkplan(4, "gpipe", "fp32", "fp32");
    assert_int_equal(nb_cplan_pin(w->cp, &pin, err, sizeof err), 0);
    nb_cplan_plan(w->cp, 7, &ps);
    assert_true(c->link[0].dir[NB_DIR_FWD].overhead > 0);
}

/* A burst of another process makes one step's compute 3x slower: the
 * size's time (the median of its recent steps) does not take it into later
 * predictions, as an average would. */
static void test_burst_ignored(void **state)
{
    world_t *w = *state;
    probe(w);
    nb_cplan_step_t ps;
    int64_t s = 0;
    for (; s < 8; s++) {
        nb_cplan_plan(w->cp, s, &ps);
        run_step(w, s, &ps);
    }
    w->slow = 3;
    nb_cplan_plan(w->cp, s, &ps);
    run_step(w, s++, &ps);
    w->slow = 0;
    nb_cplan_plan(w->cp, s, &ps);
    run_step(w, s++, &ps);
    const nb_cost_t *c = nb_cplan_cost(w->cp);
    for (int st = 0; st < 2; st++) {
        assert_true(fabs(nb_cost_fwd(c, st, 2, ps.mb_size) / w_fwd(st, ps.mb_size) - 1) < 0.05);
        assert_true(fabs(nb_cost_bwd(c, st, 2, ps.mb_size) / w_bwd(st, ps.mb_size) - 1) < 0.05);
    }
}

/* The machine gets 2x slower for good, with replan_steps 2: the re-plan
 * takes the size in use at its new speed (the steps since the drift), not
 * the median of steps from before it. */
static void test_compute_drift(void **state)
{
    world_t *w = *state;
    char err[256] = "";
    nb_cplan_free(w->cp);
    w->cfg.job.planner.replan_steps = 2;
    if (nb_cplan_new(&w->cfg.job, &w->desc, 4, &w->cp, err, sizeof err))
        fail_msg("planner: %s", err);
    probe(w);
    nb_cplan_step_t ps;
    int64_t s = 0;
    for (; s < 12; s++) {
        nb_cplan_plan(w->cp, s, &ps);
        run_step(w, s, &ps);
    }
    w->slow = 2;
    int n = -1;
    for (int k = 0; k < 6 && n < 0; k++, s++) {
        int cur = ps.mb_size;
        nb_cplan_plan(w->cp, s, &ps);
        if (strcmp(ps.why, "re-planned") == 0)
            n = cur;
        run_step(w, s, &ps);
    }
    assert_true(n > 0);
    const nb_cost_t *c = nb_cplan_cost(w->cp);
    for (int st = 0; st < 2; st++)
        assert_true(fabs(nb_cost_fwd(c, st, 2, n) / (2 * w_fwd(st, n)) - 1) < 0.1);
}

/* The world's best plan: every m, schedule and codec pair the job allows. */
static double world_best(world_t *w, nb_cplan_step_t *best)
{
    const char *sc[] = { "gpipe", "1f1b", "1f1b:1", "1f1b:2", "1f1b:3", "1f1b:4", "1f1b:6", "1f1b:8" };
    const char *cd[] = { "fp32", "fp16" };
    double t = INFINITY;
    for (int m = 1; m <= 16; m *= 2)
        for (size_t k = 0; k < NB_ARRAY_LEN(sc); k++)
            for (int f = 0; f < 2; f++)
                for (int b = 0; b < 2; b++) {
                    nb_cplan_step_t p = mkplan(m, sc[k], cd[f], cd[b]);
                    double x = world_truth(w, &p);
                    if (x < t)
                        t = x, *best = p;
                }
    return t;
}

/* The planner's predictions made before each plan ran, against what the
 * world then measured: the out-of-sample check of docs/planner.md. A sweep
 * pins each plan for 4 steps (as tests/bench/planner_wan.bench.sh does),
 * reading the "plan" reply between plans as an operator would; then the
 * planner chooses on its own. */
static void test_out_of_sample(void **state)
{
    world_t *w = *state;
    probe(w);
    nb_cplan_step_t ps;
    int64_t s = 0;
    for (; s < 4; s++) {
        nb_cplan_plan(w->cp, s, &ps);
        run_step(w, s, &ps);
    }
    char err[256] = "";
    const char *sc[] = { "gpipe", "1f1b", "1f1b:2" };
    const char *cd[][2] = { { "fp32", "fp32" }, { "fp16", "fp16" } };
    for (int m = 1; m <= 16; m *= 2)
        for (size_t k = 0; k < NB_ARRAY_LEN(sc); k++)
            for (size_t c = 0; c < NB_ARRAY_LEN(cd); c++) {
                nb_cplan_step_t pin = mkplan(m, sc[k], cd[c][0], cd[c][1]);
                assert_int_equal(nb_cplan_pin(w->cp, &pin, err, sizeof err), 0);
                for (int i = 0; i < 4; i++, s++) {
                    nb_cplan_plan(w->cp, s, &ps);
                    run_step(w, s, &ps);
                }
                json_t *j = nb_cplan_json(w->cp, 1, 0, err, sizeof err);
                assert_non_null(j);
                json_decref(j);
            }
    assert_int_equal(nb_cplan_pin(w->cp, NULL, err, sizeof err), 0);
    nb_cplan_step_t choice;
    for (int i = 0; i < 5; i++, s++) {
        nb_cplan_plan(w->cp, s, &choice);
        run_step(w, s, &choice);
    }
    json_t *j = nb_cplan_json(w->cp, 1, 0, err, sizeof err);
    assert_non_null(j);
    json_t *h = json_object_get(j, "history"), *x;
    size_t i;
    double sum = 0, worst = 0;
    int scored = 0;
    json_array_foreach(h, i, x) {
        json_t *pre = json_object_get(x, "predicted_before_run_with_overhead_s");
        double meas = json_number_value(json_object_get(x, "measured_step_median_s"));
        if (!pre)
            continue; /* a profiling plan: it ran before it had a prediction */
        double e = fabs(json_number_value(pre) / meas - 1);
        print_message("m=%-2lld %-7s %s/%s measured %.4f s, predicted before it ran %.4f s (%+.1f%%), in sample "
                      "%.4f s\n", (long long)json_integer_value(json_object_get(x, "m")),
                      json_string_value(json_object_get(x, "schedule")),
                      json_string_value(json_object_get(x, "forward")),
                      json_string_value(json_object_get(x, "backward")), meas, json_number_value(pre),
                      100 * (json_number_value(pre) / meas - 1),
                      json_number_value(json_object_get(x, "predicted_with_overhead_s")));
        sum += e;
        worst = fmax(worst, e);
        scored++;
    }
    json_decref(j);
    /* the world's hand-off and per-message wire time, in no report, show
     * up as the calibrated per-message cost */
    double ovh = nb_cplan_cost(w->cp)->link[0].dir[NB_DIR_FWD].overhead;
    print_message("calibrated per-message cost %.3f ms (the world: %.3f ms)\n", ovh * 1e3,
                  (W_HANDOFF + W_MSG_WIRE) * 1e3);
    assert_true(ovh > 0);
    assert_true(scored >= 28); /* 30 swept, at most 2 of them profiled */
    print_message("out-of-sample error: mean %.3f, max %.3f over %d plans\n", sum / scored, worst, scored);
    assert_true(sum / scored <= 0.05);
    assert_true(worst <= 0.10);
    nb_cplan_step_t best;
    double tb = world_best(w, &best), tc = world_truth(w, &choice);
    char b1[24], b2[24];
    print_message("choice m=%d %s %s/%s: %.4f s in the world; best m=%d %s %s/%s: %.4f s\n", choice.m,
                  nb_sched_format(&choice.sched, b1, sizeof b1), choice.fwd, choice.bwd, tc, best.m,
                  nb_sched_format(&best.sched, b2, sizeof b2), best.fwd, best.bwd, tb);
    assert_true(tc <= 1.05 * tb);
}

static void test_replan_on_link_drop(void **state)
{
    world_t *w = *state;
    probe(w);
    nb_cplan_step_t ps;
    int64_t s = 0;
    for (; s < 12; s++) { /* profiling, plan, settle the basis, steady */
        nb_cplan_plan(w->cp, s, &ps);
        run_step(w, s, &ps);
    }
    assert_string_equal(ps.why, "planned");
    assert_int_equal(nb_cplan_replans(w->cp), 0);
    double before = ps.pred_step_s;
    w->rx_bps = LINK_BPS / 5;
    int fired_at = -1;
    for (int k = 0; k < 6 && fired_at < 0; k++, s++) {
        nb_cplan_plan(w->cp, s, &ps);
        if (strcmp(ps.why, "re-planned") == 0)
            fired_at = k;
        run_step(w, s, &ps);
    }
    /* the third slow step fires, the next boundary re-plans */
    assert_int_equal(fired_at, 3);
    assert_int_equal(nb_cplan_replans(w->cp), 1);
    const nb_cost_t *c = nb_cplan_cost(w->cp);
    /* the model's link is the new goodput (payload of the 20 / 5 Mbit/s) */
    assert_true(fabs(c->link[0].dir[NB_DIR_FWD].bandwidth / (LINK_BPS / 5) - 1) < 0.03);
    assert_true(fabs(c->link[0].dir[NB_DIR_BWD].bandwidth / (LINK_BPS / 5) - 1) < 0.03);
    assert_true(ps.pred_step_s > before);
    /* steady at the new rate: no further re-plans */
    for (int k = 0; k < 20; k++, s++) {
        nb_cplan_plan(w->cp, s, &ps);
        run_step(w, s, &ps);
    }
    assert_int_equal(nb_cplan_replans(w->cp), 1);
}

static void test_pin_and_json(void **state)
{
    world_t *w = *state;
    probe(w);
    nb_cplan_step_t ps;
    int64_t s = 0;
    for (; s < 6; s++) {
        nb_cplan_plan(w->cp, s, &ps);
        run_step(w, s, &ps);
    }
    char err[256] = "";
    nb_cplan_step_t pin = { .m = 3, .sched = { NB_SCHED_GPIPE, 0 } };
    snprintf(pin.fwd, sizeof pin.fwd, "fp16");
    snprintf(pin.bwd, sizeof pin.bwd, "fp32");
    assert_int_equal(nb_cplan_pin(w->cp, &pin, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "does not divide"));
    pin.m = 2;
    snprintf(pin.fwd, sizeof pin.fwd, "int4");
    assert_int_equal(nb_cplan_pin(w->cp, &pin, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "not among"));
    snprintf(pin.fwd, sizeof pin.fwd, "fp16");
    assert_int_equal(nb_cplan_pin(w->cp, &pin, err, sizeof err), 0);
    for (int k = 0; k < 3; k++, s++) {
        nb_cplan_plan(w->cp, s, &ps);
        assert_int_equal(ps.m, 2);
        assert_int_equal(ps.sched.kind, NB_SCHED_GPIPE);
        assert_string_equal(ps.fwd, "fp16");
        assert_string_equal(ps.why, "pinned");
        assert_true(ps.pred_step_s > 0);
        run_step(w, s, &ps);
    }
    assert_null(nb_cplan_json(w->cp, 5, -3, err, sizeof err));
    assert_non_null(strstr(err, "bandwidth"));
    json_t *j = nb_cplan_json(w->cp, 5, 0, err, sizeof err);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "pinned");
    json_t *cands = json_object_get(j, "candidates");
    assert_int_equal(json_array_size(cands), 5);
    /* ranked: nothing beats the choice by more than the near-tie window */
    double first = json_number_value(json_object_get(json_array_get(cands, 0), "step_s")), prev = 0;
    for (size_t i = 0; i < 5; i++) {
        double t = json_number_value(json_object_get(json_array_get(cands, i), "step_s"));
        assert_true(t >= first * (1 - 0.005) - 1e-12);
        prev = fmax(prev, t);
    }
    assert_non_null(strstr(json_string_value(json_object_get(j, "table")), "<- chosen"));
    json_t *h = json_object_get(j, "history");
    assert_true(json_array_size(h) >= 2);
    bool found = false;
    for (size_t i = 0; i < json_array_size(h); i++) {
        json_t *x = json_array_get(h, i);
        if (json_integer_value(json_object_get(x, "m")) == 2 &&
            strcmp(json_string_value(json_object_get(x, "forward")), "fp16") == 0) {
            found = true;
            /* the history has the pinned steps, the prediction they
             * started with and the in-sample one */
            double meas = json_number_value(json_object_get(x, "measured_step_median_s"));
            double pred = json_number_value(json_object_get(x, "predicted_with_overhead_s"));
            double pre = json_number_value(json_object_get(x, "predicted_before_run_with_overhead_s"));
            assert_int_equal(json_integer_value(json_object_get(x, "steps")), 2);
            assert_int_equal(json_integer_value(json_object_get(x, "predicted_at_step")), 7);
            assert_true(fabs(pred / meas - 1) < 0.10);
            assert_true(fabs(pre / meas - 1) < 0.10);
        }
    }
    assert_true(found);
    json_decref(j);
    /* what if the link were 1 Mbit/s: slower predictions */
    j = nb_cplan_json(w->cp, 1, 1, err, sizeof err);
    assert_non_null(j);
    double slow = json_number_value(json_object_get(json_array_get(json_object_get(j, "candidates"), 0), "step_s"));
    assert_true(slow > prev);
    json_decref(j);
    assert_int_equal(nb_cplan_pin(w->cp, NULL, err, sizeof err), 0);
    nb_cplan_plan(w->cp, s, &ps);
    assert_string_equal(ps.why, "planned");
}

/* A stage daemon's JOINED says it runs 2 replicas: the model divides its
 * compute, adds the all-reduce, and the reply shows both. */
static void test_replicas(void **state)
{
    world_t *w = *state;
    probe(w);
    nb_cplan_replicas(w->cp, 0, 2, 1e8);
    nb_cplan_replicas(w->cp, 9, 2, 1e8); /* no such daemon: ignored */
    nb_cplan_step_t ps;
    for (int64_t s = 0; s < 4; s++) {
        nb_cplan_plan(w->cp, s, &ps);
        run_step(w, s, &ps);
    }
    const nb_cost_t *c = nb_cplan_cost(w->cp);
    assert_int_equal(nb_cost_replicas(c, 0), 2);
    assert_int_equal(nb_cost_replicas(c, 1), 1);
    char err[256] = "";
    json_t *j = nb_cplan_json(w->cp, 3, 0, err, sizeof err);
    assert_non_null(j);
    json_t *st = json_object_get(json_object_get(j, "measurements"), "stages");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(st, 0), "replicas")), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(st, 1), "replicas")), 1);
    assert_true(json_number_value(json_object_get(json_array_get(st, 0), "allreduce_s")) > 0);
    json_t *c0 = json_array_get(json_object_get(j, "candidates"), 0);
    double share = json_number_value(json_object_get(c0, "allreduce_share"));
    assert_true(share >= 0 && share < 1);
    assert_non_null(strstr(json_string_value(json_object_get(j, "table")), "allreduce"));
    json_decref(j);
}

/* A CUDA stage's device memory (free + held, from LINKS_READY) is the
 * memory limit of the stages its daemon hosts, under job.planner.
 * stage_memory when that is smaller; an absurd number from a peer, or an
 * unknown daemon, changes nothing beyond the configured limit. */
static void test_device_memory(void **state)
{
    world_t *w = *state;
    const nb_cost_t *c = nb_cplan_cost(w->cp);
    double before0 = c->stage[0].mem_limit;
    assert_true(nb_cplan_device_memory(w->cp, 1, 3e9) == 3e9);
    assert_true(c->stage[1].mem_limit == 3e9);
    assert_true(c->stage[0].mem_limit == before0); /* daemon 0's stage: untouched */
    assert_true(nb_cplan_device_memory(w->cp, 9, 1e9) == 0); /* no such daemon */
    assert_true(c->stage[1].mem_limit == 3e9);
    w->cfg.job.planner.stage_memory_bytes = 1000000000ull; /* the smaller one wins */
    assert_true(nb_cplan_device_memory(w->cp, 1, 3e9) == 1e9);
    assert_true(c->stage[1].mem_limit == 1e9);
    assert_true(nb_cplan_device_memory(w->cp, 1, 5e8) == 5e8);
    assert_true(nb_cplan_device_memory(w->cp, 1, NAN) == 1e9); /* a peer's number: the configured limit */
    assert_true(nb_cplan_device_memory(w->cp, 1, -1) == 1e9);
    w->cfg.job.planner.stage_memory_bytes = 0;
    assert_true(nb_cplan_device_memory(w->cp, 1, 1e30) == 0); /* absurd: no limit */
    assert_true(c->stage[1].mem_limit == 0);
}

static void test_wanted(void **state)
{
    world_t *w = *state;
    nb_cfg_job_t j = w->cfg.job;
    assert_true(nb_cplan_wanted(&j));
    j.micro_batches = 4;
    j.schedule = NB_CFG_SCHED_1F1B;
    j.planner.n_codecs = 0;
    assert_false(nb_cplan_wanted(&j)); /* nothing left to choose: run as without a planner */
    j.planner.n_codecs = 2;
    assert_true(nb_cplan_wanted(&j));
    j.planner.enabled = false;
    assert_false(nb_cplan_wanted(&j));
    /* a codec the codec module does not know is refused with its key */
    char err[256] = "";
    nb_cplan_t *cp = NULL;
    j = w->cfg.job;
    snprintf(j.planner.codecs[1], sizeof j.planner.codecs[1], "fp17");
    assert_int_equal(nb_cplan_new(&j, &w->desc, 4, &cp, err, sizeof err), NB_EINVAL);
    assert_null(cp);
    assert_non_null(strstr(err, "job.planner.codecs"));
}

/* A delta codec keeps a base per key on both sides: calibration must decode
 * with a stream of its own, as a receiver does (it once shared the
 * encoder's stream and failed on the second visit of the key). */
static void test_calibrate_delta(void **state)
{
    world_t *w = *state;
    nb_cfg_job_t j = w->cfg.job;
    char err[256] = "";
    nb_cplan_t *cp = NULL;
    snprintf(j.planner.codecs[1], sizeof j.planner.codecs[1], "int4(delta)");
    int rc = nb_cplan_new(&j, &w->desc, 4, &cp, err, sizeof err);
    if (rc)
        fail_msg("int4(delta): %s", err);
    const nb_cost_codec_t *c = nb_cost_codec_find(nb_cplan_cost(cp), "int4(delta)");
    assert_non_null(c);
    assert_true(c->ratio > 0 && c->ratio < 0.2);
    nb_cplan_free(cp);
}

/* Every calibrated codec's error is ||x - decode(encode(x))|| / ||x||,
 * computed here directly with the codec module on the calibration tensor
 * (fresh streams, seed 7, as the coordinator's first round trip); exact
 * codecs have 0; the JSON reply carries it per codec and per candidate. */
static void test_codec_error(void **state)
{
    world_t *w = *state;
    nb_cfg_job_t j = w->cfg.job;
    static const char *const specs[] = { "fp32", "fp16", "int8", "int4", "topk(0.1)", "int4(delta)" };
    j.planner.n_codecs = (int)NB_ARRAY_LEN(specs);
    for (int i = 0; i < j.planner.n_codecs; i++)
        snprintf(j.planner.codecs[i], sizeof j.planner.codecs[i], "%s", specs[i]);
    j.planner.max_codec_error = 0; /* no budget: all of them calibrated and kept */
    char err[256] = "";
    nb_cplan_t *cp = NULL;
    if (nb_cplan_new(&j, &w->desc, 4, &cp, err, sizeof err))
        fail_msg("planner: %s", err);
    const nb_cost_t *cost = nb_cplan_cost(cp);
    int rows = (w->cfg.job.batch / 4) * w->desc.layout.seq_len, cols = w->desc.layout.model.d_model;
    size_t n = (size_t)rows * (size_t)cols;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    assert_non_null(x);
    assert_non_null(y);
    nb_cplan_calib_data(x, n);
    nb_backend_t *be = nb_cpu_backend_new();
    int64_t shape[2] = { rows, cols };
    nb_tensor_t *tx = nb_tensor_new(be, NB_F32, 2, shape), *ty = nb_tensor_new(be, NB_F32, 2, shape);
    nb_be_from_host(be, tx->data, x, n * sizeof *x);
    for (size_t i = 0; i < NB_ARRAY_LEN(specs); i++) {
        nb_codec_spec_t sp;
        assert_int_equal(nb_codec_spec_parse(specs[i], &sp, err, sizeof err), 0);
        nb_codec_stream_t *se = nb_codec_stream_new(be, 64u << 20), *sd = nb_codec_stream_new(be, 64u << 20);
        nb_codec_msg_t m;
        nb_codec_msg_init(&m);
        assert_int_equal(nb_codec_encode(be, &sp, tx, 7, se, 1, &m, err, sizeof err), 0);
        assert_int_equal(nb_codec_decode_into(be, m.spec, m.meta, m.meta_len, m.payload, m.payload_len, 0, sd, ty,
                                              err, sizeof err), 0);
        nb_be_to_host(be, y, ty->data, n * sizeof *y);
        nb_be_sync(be);
        double num = 0, den = 0;
        for (size_t k = 0; k < n; k++) {
            num += ((double)x[k] - y[k]) * ((double)x[k] - y[k]);
            den += (double)x[k] * x[k];
        }
        double want = sqrt(num / den);
        const nb_cost_codec_t *c = nb_cost_codec_find(cost, specs[i]);
        assert_non_null(c);
        double got = cost->codec_err[c - cost->codec];
        print_message("codec %-12s error %.5f (direct %.5f)\n", specs[i], got, want);
        assert_true(fabs(got - want) <= 1e-9 + 1e-6 * want);
        nb_codec_msg_free(&m);
        nb_codec_stream_free(se);
        nb_codec_stream_free(sd);
    }
    /* exact is 0, and the ranks of the lossy ones are as expected */
    assert_true(cost->codec_err[nb_cost_codec_find(cost, "fp32") - cost->codec] == 0);
    assert_true(cost->codec_err[nb_cost_codec_find(cost, "fp16") - cost->codec] < 1e-3);
    assert_true(cost->codec_err[nb_cost_codec_find(cost, "topk(0.1)") - cost->codec] > 0.5);
    json_t *r = nb_cplan_json(cp, 50, 0, err, sizeof err);
    assert_non_null(r);
    json_t *cd = json_object_get(json_object_get(r, "measurements"), "codecs");
    assert_int_equal(json_array_size(cd), NB_ARRAY_LEN(specs));
    assert_non_null(json_object_get(json_array_get(cd, 0), "error"));
    json_t *c0 = json_array_get(json_object_get(r, "candidates"), 0);
    assert_non_null(json_object_get(c0, "forward_error"));
    assert_non_null(json_object_get(c0, "backward_error"));
    assert_non_null(strstr(json_string_value(json_object_get(r, "table")), "fwd err"));
    assert_true(json_number_value(json_object_get(r, "max_codec_error")) == 0); /* off in this job */
    json_decref(r);
    nb_tensor_free(tx);
    nb_tensor_free(ty);
    nb_be_free(be);
    free(x);
    free(y);
    nb_cplan_free(cp);
}

/* The budget in the coordinator: with the default (0.25) topk(0.1), the
 * fastest codec on this 20 Mbit/s link, is neither profiled nor planned nor
 * a candidate in the reply; a list with nothing within it is refused. */
static void test_budget_in_coordinator(void **state)
{
    world_t *w = *state;
    nb_cfg_job_t j = w->cfg.job;
    assert_true(j.planner.max_codec_error == 0.25);
    snprintf(j.planner.codecs[0], sizeof j.planner.codecs[0], "topk(0.1)");
    snprintf(j.planner.codecs[1], sizeof j.planner.codecs[1], "fp16");
    snprintf(j.codecs.forward, sizeof j.codecs.forward, "topk(0.1)");
    char err[256] = "";
    nb_cplan_t *cp = NULL;
    if (nb_cplan_new(&j, &w->desc, 4, &cp, err, sizeof err))
        fail_msg("planner: %s", err);
    nb_cplan_t *keep = w->cp;
    w->cp = cp;
    nb_cplan_step_t ps;
    probe(w);
    for (int64_t s = 0; s < 6; s++) {
        assert_int_equal(nb_cplan_plan(cp, s, &ps), 0);
        assert_string_equal(ps.fwd, "fp16");
        assert_string_equal(ps.bwd, "fp16");
        run_step(w, s, &ps);
    }
    json_t *r = nb_cplan_json(cp, 200, 0, err, sizeof err);
    assert_non_null(r);
    assert_true(json_number_value(json_object_get(r, "max_codec_error")) == 0.25);
    json_t *cands = json_object_get(r, "candidates"), *c;
    size_t i;
    assert_true(json_array_size(cands) > 0);
    json_array_foreach (cands, i, c) {
        assert_string_equal(json_string_value(json_object_get(c, "forward")), "fp16");
        assert_true(json_number_value(json_object_get(c, "forward_error")) < 1e-3);
    }
    json_decref(r);
    w->cp = keep;
    nb_cplan_free(cp);
    /* nothing within the budget: refused, naming the key */
    j.planner.n_codecs = 1;
    assert_int_equal(nb_cplan_new(&j, &w->desc, 4, &cp, err, sizeof err), NB_EINVAL);
    assert_null(cp);
    assert_non_null(strstr(err, "job.planner.max_codec_error"));
}

/* Live quality signal: the stages' sampled round-trip error of the tensors
 * they send replaces the calibrated one; when the chosen codec's crosses the
 * budget the planner re-plans (once) to codecs within it. */
static void test_live_error_replans(void **state)
{
    world_t *w = *state;
    probe(w);
    nb_cplan_step_t ps;
    int64_t s = 0;
    w->live_err = 0.01;
    for (; s < 6; s++) {
        nb_cplan_plan(w->cp, s, &ps);
        run_step(w, s, &ps);
    }
    assert_string_equal(ps.why, "planned");
    /* at 20 Mbit/s half the bytes pay: fp16 in both directions */
    assert_string_equal(ps.fwd, "fp16");
    assert_string_equal(ps.bwd, "fp16");
    const nb_cost_t *c = nb_cplan_cost(w->cp);
    assert_true(c->codec_err[nb_cost_codec_find(c, "fp16") - c->codec] == 0.01);
    assert_int_equal(nb_cplan_replans(w->cp), 0);
    /* the signal drifts over the budget (0.25) */
    w->live_err = 0.4;
    nb_cplan_plan(w->cp, s, &ps);
    run_step(w, s++, &ps);
    nb_cplan_plan(w->cp, s, &ps);
    assert_string_equal(ps.why, "re-planned");
    assert_string_equal(ps.fwd, "fp32");
    assert_string_equal(ps.bwd, "fp32");
    assert_int_equal(nb_cplan_replans(w->cp), 1);
    char err[256];
    json_t *r = nb_cplan_json(w->cp, 5, 0, err, sizeof err);
    assert_non_null(r);
    assert_non_null(strstr(json_string_value(json_object_get(r, "last_replan_reason")), "live round-trip error"));
    json_t *cd = json_object_get(json_object_get(r, "measurements"), "codecs"), *o;
    size_t i;
    json_array_foreach (cd, i, o)
        if (strcmp(json_string_value(json_object_get(o, "spec")), "fp16") == 0) {
            assert_string_equal(json_string_value(json_object_get(o, "error_source")), "live");
            assert_true(json_number_value(json_object_get(o, "error")) == 0.4);
        }
    json_decref(r);
    /* fp32 sends no samples; fp16 stays out, no more re-plans */
    run_step(w, s++, &ps);
    for (int k = 0; k < 8; k++, s++) {
        nb_cplan_plan(w->cp, s, &ps);
        assert_string_equal(ps.fwd, "fp32");
        run_step(w, s, &ps);
    }
    assert_int_equal(nb_cplan_replans(w->cp), 1);
}

/* A low-rank split cut at the factor (job.lowrank block 1, rank 8, of
 * d_model 64; clusters 0-1 and 2-3): stage 0 encodes and stage 1 decodes
 * r-wide activations. The codec's cost per raw byte learnt from their
 * reports divides by the bytes of that cut (32 positions x 8 floats per
 * sequence), not by a d_model-wide tensor, which would make fp16 look 8x
 * cheaper than it is. */
static void test_lowrank_codec_bytes(void **state)
{
    (void)state;
    static const char *text =
        "name: coord\n"
        "role: coordinator\n"
        "listen: 127.0.0.1:0\n"
        "tls: {cert: c.pem, key: c.key, ca: ca.pem}\n"
        "job:\n"
        "  model: {n_layer: 4, d_model: 64, n_head: 4, d_ff: 256, vocab: 256, max_seq: 32, tie_embeddings: false}\n"
        "  lowrank: {block: 1, rank: 8}\n"
        "  data: data.tok\n"
        "  batch: 16\n"
        "  seq_len: 32\n"
        "  steps: 1000\n"
        "  micro_batches: auto\n"
        "  schedule: auto\n"
        "  codecs: {forward: fp32, backward: fp32}\n"
        "  clusters:\n"
        "    - {name: a, address: 127.0.0.1:1, layers: 0-1}\n"
        "    - {name: b, address: 127.0.0.1:2, layers: 2-3}\n"
        "  planner: {enabled: true, codecs: [fp32, fp16], replan_steps: 3, replan_threshold: 0.2}\n";
    const double enc = 3e-9, dec = 2e-9; /* s per raw byte of the cut */
    nb_config_t *cfg = calloc(1, sizeof *cfg);
    nb_job_desc_t *desc = calloc(1, sizeof *desc);
    nb_cplan_t *cp;
    char err[512] = "";
    if (nb_cfg_load_string("coord.yaml", text, strlen(text), cfg, err, sizeof err))
        fail_msg("config: %s", err);
    if (nb_job_from_cfg(&cfg->job, 4, 77, desc, err, sizeof err))
        fail_msg("job: %s", err);
    assert_int_equal(nb_part_spec_out_width(&desc->layout.model, &desc->layout.parts[0]), 8);
    if (nb_cplan_new(&cfg->job, desc, 4, &cp, err, sizeof err))
        fail_msg("planner: %s", err);
    nb_cplan_link_probe(cp, 0, 1, 2.0, 2.5e6);
    nb_cplan_link_probe(cp, 1, 0, 2.0, 2.5e6);
    nb_cplan_step_t ps, pin = { .m = 4, .sched = { NB_SCHED_GPIPE, 0 } };
    snprintf(pin.fwd, sizeof pin.fwd, "fp16");
    snprintf(pin.bwd, sizeof pin.bwd, "fp32");
    for (int64_t s = 0; s < 40; s++) {
        if (s == 6)
            assert_int_equal(nb_cplan_pin(cp, &pin, err, sizeof err), 0);
        assert_int_equal(nb_cplan_plan(cp, s, &ps), 0);
        double raw = (double)ps.mb_size * 32 * 8 * 4; /* the factor: 8 floats per position */
        for (int d = 0; d < 2; d++) {
            Nebula__MicroBatchTiming tm[64], *tp[64];
            for (int i = 0; i < ps.m; i++) {
                nebula__micro_batch_timing__init(&tm[i]);
                tm[i].stage = (uint32_t)d;
                tm[i].micro_batch = (uint32_t)i;
                tm[i].forward_ns = 1000000;
                tm[i].backward_ns = 2000000;
                if (strcmp(ps.fwd, "fp32") != 0) {
                    tm[i].encode_ns = d == 0 ? (uint64_t)(enc * raw * 1e9) : 0;
                    tm[i].decode_ns = d == 1 ? (uint64_t)(dec * raw * 1e9) : 0;
                }
                tp[i] = &tm[i];
            }
            Nebula__LinkMeasurement lm = NEBULA__LINK_MEASUREMENT__INIT, *lp = &lm;
            lm.peer = (uint32_t)(1 - d);
            lm.rx_bytes_per_s = 2.5e6;
            Nebula__Report r = NEBULA__REPORT__INIT;
            r.step = (uint64_t)s;
            r.daemon = (uint32_t)d;
            r.n_timings = (size_t)ps.m;
            r.timings = tp;
            r.n_links = 1;
            r.links = &lp;
            r.step_ns = 20000000;
            nb_cplan_report(cp, d, &r);
        }
        nb_cplan_step_done(cp, s, 0.021, 0.020);
    }
    assert_string_equal(ps.fwd, "fp16");
    const nb_cost_codec_t *c = nb_cost_codec_find(nb_cplan_cost(cp), "fp16");
    assert_non_null(c);
    print_message("fp16 learnt at the factor cut: encode %.3g s/byte (reported %.3g), decode %.3g (%.3g)\n",
                  c->enc_per_byte, enc, c->dec_per_byte, dec);
    assert_true(fabs(c->enc_per_byte - enc) < 0.02 * enc);
    assert_true(fabs(c->dec_per_byte - dec) < 0.02 * dec);
    nb_cplan_free(cp);
    free(desc);
    free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_profile_fit_plan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_of_sample, setup, teardown),
        cmocka_unit_test_setup_teardown(test_burst_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compute_drift, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replan_on_link_drop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pin_and_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replicas, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wanted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_calibrate_delta, setup, teardown),
        cmocka_unit_test_setup_teardown(test_codec_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_in_coordinator, setup, teardown),
        cmocka_unit_test_setup_teardown(test_live_error_replans, setup, teardown),
        cmocka_unit_test(test_lowrank_codec_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
