/*
 * coord_plan_internal.h - the planner glue's state, shared by coord_plan.c
 * (measuring, fitting, choosing) and coord_plan_json.c (the status socket's
 * read-only view). Nothing outside those two files includes it.
 */
#ifndef NB_COORD_PLAN_INTERNAL_H
#define NB_COORD_PLAN_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include "daemon/pipeline/coord_plan.h"
#include "daemon/planner/replan.h"
#include "daemon/planner/repart.h"

#define MAX_SIZES 16     /* micro-batch sizes remembered per stage */
#define MAX_HIST 64      /* distinct plans remembered with their measurements */
#define HIST_STEPS 64    /* step times kept per plan for its median */
#define FIT_ALPHA 0.3    /* EMA weight of a new step in a codec's measured cost */
#define OVH_ALPHA 0.2    /* EMA weight of a new step in the per-step overhead */
#define BASIS_STEPS 3     /* steps averaged into a plan's re-plan basis */
#define DEFAULT_BW 1.25e8 /* bytes/s assumed for a link nobody measured (1 Gbit/s) */

#define SIZE_OBS 5  /* recent steps per micro-batch size whose median is the size's time */

typedef struct {
    int n;           /* sequences per micro-batch (per replica: the shard) */
    double f, b;     /* median of the recent steps' mean forward / backward seconds per micro-batch */
    double fv[SIZE_OBS], bv[SIZE_OBS]; /* those steps, a ring */
    int nv, next;
} size_pt_t;

typedef struct {
    int m;
    nb_sched_spec_t sched;
    char fwd[NB_CFG_SPEC_MAX], bwd[NB_CFG_SPEC_MAX];
    long steps;               /* steps measured (the first under each switch is skipped) */
    double wall_sum, stage_sum;
    double wall[HIST_STEPS], stage[HIST_STEPS]; /* the first HIST_STEPS of them, for medians */
    /* per stage, summed over those steps: mean seconds per micro-batch */
    double f[NB_COST_MAX_STAGES], b[NB_COST_MAX_STAGES], enc[NB_COST_MAX_STAGES], dec[NB_COST_MAX_STAGES];
    /* The prediction made when the plan was first chosen or pinned, before
     * any of its steps ran (out of sample: nothing this plan measured had
     * entered the model); pre_s < 0 when the plan ran before it had one
     * (the profiling plans). pre_ovh_s adds the per-step overhead known
     * then. pre_step: the step it was made for. */
    double pre_s, pre_ovh_s;
    int64_t pre_step;
} hist_t;

struct nb_cplan {
    const nb_cfg_job_t *job;
    nb_job_desc_t desc;
    nb_plan_req_t req;
    nb_cost_t cost;
    int p, batch, seq, dmodel;
    /* profiling */
    int prof_m[2], nprof;
    int64_t profile_end;      /* steps before this one are profiling steps */
    /* the step in flight */
    double acc_f[NB_COST_MAX_STAGES], acc_b[NB_COST_MAX_STAGES];
    double acc_enc[NB_COST_MAX_STAGES], acc_dec[NB_COST_MAX_STAGES];
    int acc_n[NB_COST_MAX_STAGES];
    double acc_err[2];        /* largest live round-trip error sampled this step, [fwd, bwd]; 0: none */
    bool err_live[NB_COST_MAX_CODECS]; /* codec_err[i] comes from live tensors, not the calibration */
    double rx_bps[NB_SCHED_MAX_STAGES][NB_SCHED_MAX_STAGES]; /* passive, [from][to] daemon */
    size_pt_t pts[NB_COST_MAX_STAGES][MAX_SIZES];
    int npts[NB_COST_MAX_STAGES];
    bool link_measured[NB_COST_MAX_STAGES][2];
    double probe_bw[NB_COST_MAX_STAGES][2];  /* what the probes said, bytes/s; 0: none */
    bool compute_measured;
    /* the plan */
    nb_cplan_step_t cur;
    bool have_cur, planned;
    int64_t cur_since;        /* first step of the current plan */
    bool pinned, pin_pending;
    nb_cplan_step_t pin;
    /* re-planning */
    nb_replan_cfg_t rcfg;
    nb_replan_t rp;
    bool basis_set, replan_due;
    bool settle_links;        /* a re-plan scaled the links: take the settled rate at the next basis */
    int64_t basis_at;         /* the step whose measurements become the basis */
    nb_replan_sample_t last_obs;
    nb_replan_sample_t basis_sum;   /* observations averaged into the basis */
    int basis_n;
    char reason[160];
    long replans;
    double overhead;          /* EMA of wall - longest stage step: commit, optimizer, control latency */
    bool have_overhead;
    hist_t hist[MAX_HIST];
    int nhist;
    /* re-partitioning (job.planner.repartition; docs/planner.md) */
    double head_blocks;       /* the head's work in block equivalents */
    bool repart_on;
    nb_repart_t repart;
    nb_repart_choice_t repart_last; /* the last step's choice */
    bool repart_have;
};

/* The prediction for a fully given plan on cost; < 0 if it cannot be
 * evaluated. *bubble (may be NULL) gets its bubble share. */
double nb__cplan_predict(const nb_cplan_t *cp, const nb_cost_t *cost, int m, const nb_sched_spec_t *sched,
                         const char *fwd, const char *bwd, double *bubble);

/* Median of a plan's kept step times (wall, or the longest stage's); -1
 * before its first step. */
double nb__cplan_hist_median(const hist_t *h, bool wall);

/* The simulated step of a plan run with the compute its own steps measured
 * and cost's links; < 0 if it cannot be evaluated. */
double nb__cplan_predict_own(const nb_cplan_t *cp, const nb_cost_t *cost, const hist_t *h);

/* The links' per-message cost that best fits the plans run so far (seconds);
 * -1 while fewer than two micro-batch counts have been measured. Reads only. */
double nb__cplan_fit_overhead(const nb_cplan_t *cp);

/* Sets every link direction's per-message cost of cost to overhead. */
void nb__cplan_set_overhead(nb_cost_t *cost, double overhead);

#endif
