/*
 * coord_plan_json.c - the status socket's view of the planner glue
 * (`nebulactl plan`, docs/planner.md): the current plan, what was measured,
 * the ranked candidates of a fresh search, and every plan run so far with
 * its predictions before and after it ran. Reads the planner state only:
 * the search and the per-message fit run on a copy of the cost model.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/pipeline/coord_plan_internal.h"
#include "kernels/common.h"

static json_t *step_json(const nb_cplan_step_t *c)
{
    char sb[24];
    return json_pack("{s:i, s:i, s:s, s:s, s:s, s:f, s:f, s:s}", "m", c->m, "micro_batch_size", c->mb_size,
                     "schedule", nb_sched_format(&c->sched, sb, sizeof sb), "forward", c->fwd, "backward", c->bwd,
                     "predicted_step_s", c->pred_step_s, "predicted_bubble", c->pred_bubble, "why",
                     c->why ? c->why : "");
}

static json_t *cand_json(const nb_cost_t *cost, const nb_plan_cand_t *c, int rank)
{
    char sb[24];
    json_t *split = json_array(), *mem = json_array();
    for (int s = 0; s < cost->p; s++) {
        json_array_append_new(split, json_integer(c->layers[s]));
        json_array_append_new(mem, json_real(c->mem[s] / (1024.0 * 1024.0 * 1024.0)));
    }
    return json_pack("{s:i, s:i, s:f, s:s, s:s, s:s, s:o, s:f, s:f, s:f, s:o, s:b, s:f, s:f, s:f, s:f}", "rank", rank, "m", c->m,
                     "micro_batch_size", c->mb_size, "schedule", nb_sched_format(&c->sched, sb, sizeof sb),
                     "forward", cost->codec[c->fwd_codec].spec, "backward", cost->codec[c->bwd_codec].spec, "split",
                     split, "step_s", c->step_time, "bubble", c->bubble, "samples_per_s", c->samples_per_s,
                     "memory_gib", mem, "feasible", c->feasible, "allreduce_s", c->allreduce_s, "allreduce_share",
                     c->allreduce_share, "forward_error", cost->codec_err[c->fwd_codec], "backward_error",
                     cost->codec_err[c->bwd_codec]);
}

static json_t *measurements_json(const nb_cplan_t *cp, const nb_cost_t *cost)
{
    json_t *st = json_array(), *ln = json_array(), *cd = json_array();
    for (int s = 0; s < cost->p; s++) {
        const nb_cost_stage_t *x = &cost->stage[s];
        int L = cp->req.fixed_layers[s];
        double fa = x->fwd_fixed.a + L * x->fwd_layer.a, fb = x->fwd_fixed.b + L * x->fwd_layer.b;
        double ba = x->bwd_fixed.a + L * x->bwd_layer.a, bb = x->bwd_fixed.b + L * x->bwd_layer.b;
        json_t *sizes = json_array();
        for (int i = 0; i < cp->npts[s]; i++)
            json_array_append_new(sizes, json_pack("{s:i, s:f, s:f}", "n", cp->pts[s][i].n, "forward_s",
                                                   cp->pts[s][i].f, "backward_s", cp->pts[s][i].b));
        json_t *so = json_pack("{s:i, s:s, s:i, s:{s:f, s:f}, s:{s:f, s:f}, s:o, s:f}", "stage", s, "daemon", x->name,
                               "layers", L, "forward_s", "a", fa, "b", fb, "backward_s", "a", ba, "b", bb, "sizes",
                               sizes, "memory_limit_bytes", x->mem_limit);
        /* replicas: the fits and sizes are per device (n = the shard) */
        json_object_set_new(so, "replicas", json_integer(nb_cost_replicas(cost, s)));
        json_object_set_new(so, "reduce_bytes_per_s",
                            json_real(x->reduce_bw > 0 ? x->reduce_bw : NB_COST_REDUCE_BW_CPU));
        json_object_set_new(so, "allreduce_s",
                            json_real(nb_cost_allreduce(cost, s, nb_cost_grad_bytes(&cp->req.model, cost->p, s, L))));
        json_array_append_new(st, so);
    }
    for (int s = 0; s + 1 < cost->p; s++) {
        json_t *o = json_pack("{s:i}", "boundary", s);
        for (int d = 0; d < 2; d++) {
            const nb_cost_dir_t *x = &cost->link[s].dir[d];
            json_object_set_new(o, d == NB_DIR_FWD ? "forward" : "backward",
                                json_pack("{s:f, s:f, s:f, s:b}", "latency_ms", x->latency * 1e3, "bandwidth_mbit",
                                          x->bandwidth * 8e-6, "overhead_ms", x->overhead * 1e3, "measured",
                                          cp->link_measured[s][d]));
        }
        json_array_append_new(ln, o);
    }
    for (int i = 0; i < cost->ncodecs; i++) {
        const nb_cost_codec_t *c = &cost->codec[i];
        json_array_append_new(cd, json_pack("{s:s, s:f, s:f, s:f, s:i, s:f, s:s}", "spec", c->spec, "ratio",
                                            c->ratio, "encode_ns_per_byte", c->enc_per_byte * 1e9,
                                            "decode_ns_per_byte", c->dec_per_byte * 1e9, "lossiness", c->lossiness,
                                            "error", cost->codec_err[i], "error_source",
                                            cp->err_live[i] ? "live" : "calibration"));
    }
    return json_pack("{s:o, s:o, s:o, s:b}", "stages", st, "links", ln, "codecs", cd, "compute_measured",
                     cp->compute_measured);
}

json_t *nb_cplan_json(const nb_cplan_t *cp, int max_rows, double bandwidth_mbit, char *err, size_t errlen)
{
    if (max_rows <= 0)
        max_rows = 20;
    if (!(bandwidth_mbit >= 0) || !isfinite(bandwidth_mbit)) {
        snprintf(err, errlen, "bandwidth_mbit: must be a positive number of Mbit/s");
        return NULL;
    }
    nb_cost_t *cost = malloc(sizeof *cost);
    if (!cost) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    /* the model as the next search would see it, on a copy: showing it
     * changes nothing the planner holds */
    *cost = cp->cost;
    double ovh = nb__cplan_fit_overhead(cp);
    if (ovh >= 0)
        nb__cplan_set_overhead(cost, ovh);
    if (bandwidth_mbit > 0)
        nb_cost_set_bandwidth_mbit(cost, bandwidth_mbit);
    nb_plan_result_t res;
    char serr[512] = "";
    int rc = nb_plan_search(cost, &cp->req, &res, serr, sizeof serr);
    if (rc < 0 && rc != NB_ELIMIT) {
        free(cost);
        snprintf(err, errlen, "search: %s", serr);
        return NULL;
    }
    const char *state = cp->pinned ? "pinned" : cp->planned ? "planned" : "profiling";
    json_t *o = json_pack("{s:s, s:o, s:i, s:f, s:o}", "state", state, "current", step_json(&cp->cur), "replans",
                          (json_int_t)cp->replans, "overhead_s", cp->have_overhead ? cp->overhead : -1.0,
                          "measurements", measurements_json(cp, cost));
    if (bandwidth_mbit > 0)
        json_object_set_new(o, "bandwidth_mbit", json_real(bandwidth_mbit));
    json_object_set_new(o, "max_codec_error", json_real(cp->req.max_err > 0 ? cp->req.max_err : 0));
    json_t *split = json_array();
    for (int s = 0; s < cp->p; s++)
        json_array_append_new(split, json_integer(cp->req.fixed_layers[s]));
    json_object_set_new(o, "split", split);
    if (cp->repart_on) {
        json_t *rp = json_pack("{s:I, s:f}", "moves", (json_int_t)cp->repart.moves, "min_gain",
                               cp->repart.cfg.min_gain);
        if (cp->repart_have) {
            json_t *best = json_array();
            for (int s = 0; s < cp->p; s++)
                json_array_append_new(best, json_integer(cp->repart_last.layers[s]));
            json_object_set_new(rp, "best_split", best);
            json_object_set_new(rp, "current_step_s", json_real(cp->repart_last.cur_s));
            json_object_set_new(rp, "best_step_s", json_real(cp->repart_last.best_s));
            json_object_set_new(rp, "gain", json_real(cp->repart_last.gain));
        }
        json_object_set_new(o, "repartition", rp);
    }
    if (cp->reason[0])
        json_object_set_new(o, "last_replan_reason", json_string(cp->reason));
    if (rc == NB_ELIMIT)
        json_object_set_new(o, "error", json_string(serr));
    json_t *cands = json_array();
    for (int i = 0; i < res.n && i < max_rows; i++)
        json_array_append_new(cands, cand_json(cost, &res.cand[i], res.cand[i].feasible ? i + 1 : 0));
    json_object_set_new(o, "candidates", cands);
    char *text = NULL;
    size_t tlen = 0;
    FILE *f = open_memstream(&text, &tlen);
    if (f) {
        if (rc == 0) {
            char d[320];
            fprintf(f, "chosen: %s\n", nb_plan_describe(cost, &res.cand[0], d, sizeof d));
        } else {
            fprintf(f, "no plan: %s\n", serr);
        }
        nb_plan_print(f, cost, &res, max_rows);
        fclose(f);
        json_object_set_new(o, "table", json_string(text ? text : ""));
    }
    free(text);
    json_t *hist = json_array();
    for (int i = 0; i < cp->nhist; i++) {
        const hist_t *h = &cp->hist[i];
        if (h->steps < 1)
            continue;
        char sb[24];
        double bub = -1, pred = nb__cplan_predict(cp, cost, h->m, &h->sched, h->fwd, h->bwd, &bub);
        double wall = h->wall_sum / h->steps, stage = h->stage_sum / h->steps;
        double with = pred >= 0 && cp->have_overhead ? pred + cp->overhead : -1;
        double own = nb__cplan_predict_own(cp, cost, h);
        double own_with = own >= 0 && cp->have_overhead ? own + cp->overhead : -1;
        json_t *row = json_pack("{s:i, s:s, s:s, s:s, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f}",
                                "m", h->m, "schedule", nb_sched_format(&h->sched, sb, sizeof sb),
                                "forward", h->fwd, "backward", h->bwd, "steps", (json_int_t)h->steps,
                                "measured_step_s", wall, "measured_stage_step_s", stage,
                                "measured_step_median_s", nb__cplan_hist_median(h, true),
                                "measured_stage_step_median_s", nb__cplan_hist_median(h, false),
                                "predicted_step_s", pred, "predicted_with_overhead_s", with,
                                "predicted_bubble", bub, "simulated_own_compute_s", own,
                                "simulated_own_compute_with_overhead_s", own_with);
        /* out of sample: the prediction the plan started with (absent for
         * plans that ran before they had one, i.e. the profiling plans) */
        if (row && h->pre_s >= 0) {
            json_object_set_new(row, "predicted_before_run_s", json_real(h->pre_s));
            json_object_set_new(row, "predicted_before_run_with_overhead_s", json_real(h->pre_ovh_s));
            json_object_set_new(row, "predicted_at_step", json_integer((json_int_t)h->pre_step + 1));
        }
        json_array_append_new(hist, row);
    }
    json_object_set_new(o, "history", hist);
    if (rc == 0 || rc == NB_ELIMIT)
        nb_plan_result_free(&res);
    free(cost);
    return o;
}
