/*
 * nebula-train - the deterministic single-process trainer.
 *
 * usage: nebula-train --config FILE [--steps N] [--stop-after N]
 *                     [--checkpoint ROOT [--checkpoint-every N] [--keep K]]
 *                     [--resume PATH] [--eval-only]
 * Reads a YAML file with role: train (docs/config.md), trains the model of
 * job.model on the token file job.data, prints a progress line every
 * job.log_every steps (step, loss, learning rate, gradient norm, tokens/s)
 * and writes the weights to job.output (when set) at the end. With
 * job.init the run starts from pretrained weights (a weights file or
 * safetensors, docs/import-export.md) instead of seeded ones; a --resume
 * checkpoint takes precedence. With job.freeze (and job.trainable) the
 * matching tensors stay as they are, with no gradient or optimizer state
 * (docs/config.md); the run prints what is frozen and the memory of the
 * weights, gradients and optimizer state.
 * With job.encoder the job is an encoder-decoder pair (job.model the
 * decoder) trained on the span task of job.spans (docs/finetune.md): the
 * loop of daemon/train/encdec_run.c, which ends with the held-out score
 * (loss, exact match, token F1) and writes job.encoder.output and
 * job.output; --checkpoint and --resume are refused there.
 *   --steps N         train N steps instead of job.steps (the LR schedule
 *                     follows N)
 *   --stop-after N    stop once N steps are done (schedule unchanged)
 *   --checkpoint ROOT write a checkpoint (weights, AdamW state, step;
 *                     docs/checkpoints.md) to ROOT/step-<8-digit steps>/
 *                     when the run stops, and every N steps with
 *                     --checkpoint-every N; keep the newest K complete ones
 *                     (--keep, default 3). Temporary files of writes that
 *                     were killed are removed at start-up.
 *   --resume PATH     continue from a checkpoint of the same run: a step
 *                     directory, or a root (its newest complete
 *                     checkpoint), written by nebula-train or by the
 *                     stages of a pipeline; the result equals an
 *                     uninterrupted run bit for bit
 *   --eval-only       an encoder-decoder job only: train nothing, score the
 *                     held-out windows with the weights of job.encoder.init
 *                     and job.init (for example the two files the daemons
 *                     of a job across two clusters wrote), write no weights
 *   --version         the version and the kernels in use
 * NEBULA_CPU_LEVEL=generic|avx2|avx512 forces a lower CPU kernel level.
 * A step whose gradient norm is not finite is skipped (no update, a warning);
 * job.max_skipped_steps consecutive skips stop the run with status 1.
 * NEBULA_TEST_NONFINITE_GRAD (daemon/train/grad_fault.h) injects such
 * gradients, for tests only.
 * SIGINT/SIGTERM stop the run after the current step (writing a
 * checkpoint if --checkpoint is given) with exit status 128 + signal.
 * Exit status: 0 done, 1 runtime error, 2 bad usage, 78 bad configuration,
 * 130/143 stopped by SIGINT/SIGTERM.
 */
#include <getopt.h>
#include <math.h>
#include <limits.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/service/device.h"
#include "daemon/config/config.h"
#include "daemon/log.h"
#include "daemon/pipeline/job.h"
#include "daemon/train/cfg_model.h"
#include "daemon/train/encdec_run.h"
#include "daemon/pipeline/encdec_msg.h"
#include "daemon/train/hf_model.h"
#include "daemon/train/lowrank_init.h"
#include "daemon/train/trainer.h"
#include "daemon/train/checkpoint.h"
#include "daemon/train/weights.h"
#include "daemon/core/version.h"
#include "kernels/cpu_level.h"

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    stop_signal = sig;
}

static void usage(void)
{
    fprintf(stderr, "usage: nebula-train --config FILE [--steps N] [--stop-after N]\n"
                    "                    [--checkpoint ROOT [--checkpoint-every N] [--keep K]] [--resume PATH]\n"
                    "                    [--eval-only]   (an encoder-decoder job: score job.encoder.init + job.init)\n"
                    "       nebula-train --help | --version\n"
                    "Environment: " NB_CPU_LEVEL_ENV "=generic|avx2|avx512 runs the CPU kernels at a lower level\n"
                    "(the same bits, slower; docs/kernels.md).\n");
}

/* Parses a positive step count; -1 when it is not one. */
static long parse_steps(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    return (*end || end == s || v <= 0 || v > 100000000) ? -1 : v;
}

/* An AdamW config of a job's optimizer section over `steps` steps. */
static nb_optim_config_t to_optim(const nb_cfg_optim_t *o, int steps)
{
    return (nb_optim_config_t){
        .lr = (float)o->lr, .lr_min = (float)o->min_lr, .warmup_steps = (int)o->warmup_steps,
        .total_steps = steps, .beta1 = (float)o->beta1, .beta2 = (float)o->beta2,
        .eps = (float)o->eps, .weight_decay = (float)o->weight_decay, .grad_clip = (float)o->grad_clip,
    };
}

/* Maps the loaded job onto the trainer's plain structs. */
static int to_train_config(const nb_config_t *cfg, nb_train_config_t *tc, char *err, size_t errlen)
{
    const nb_cfg_job_t *j = &cfg->job;
    memset(tc, 0, sizeof *tc);
    if (cfg->role != NB_ROLE_TRAIN || !j->present) {
        snprintf(err, errlen, "%s: role must be train (with a job section) for nebula-train", cfg->path);
        return -1;
    }
    tc->model = nb_cfg_to_model(&j->model);
    if (nb_cfg_set_adapters(cfg, &j->adapters, "job", &tc->model, err, errlen))
        return -1;
    if (nb_job_lowrank_from_cfg(j, &tc->model, err, errlen))
        return -1;
    tc->optim = to_optim(&j->optimizer, (int)j->steps);
    tc->seed = j->seed;
    tc->batch = (int)j->batch;
    tc->micro_batches = j->micro_batches > 0 ? (int)j->micro_batches : 1;
    tc->seq_len = (int)j->seq_len;
    tc->steps = (int)j->steps;
    tc->max_skipped_steps = (int)j->max_skipped_steps;
    snprintf(tc->data, sizeof tc->data, "%s", j->data);
    tc->eval_fraction = j->eval.fraction;
    tc->precision = j->precision == NB_CFG_PREC_BF16 ? NB_PREC_BF16 : NB_PREC_FP32;
    snprintf(tc->eval_data, sizeof tc->eval_data, "%s", j->eval.data);
    tc->eval_batches = (int)j->eval.batches;
    nb_cfg_to_freeze(&tc->freeze, j->n_freeze, j->freeze, j->n_trainable, j->trainable);
    return 0;
}

/* The frozen tensors and where the model's memory goes: the line a
 * fine-tuning user reads to see what freezing saved. */
static void print_memory(nb_trainer_t *tr)
{
    nb_part_t *p = nb_trainer_part(tr);
    int nt = nb_part_num_tensors(p), ntr = nb_part_num_trainable(p);
    size_t np = nb_part_num_params(p), ng = nb_part_num_grads(p);
    double mib = 1024.0 * 1024.0;
    if (ntr < nt)
        printf("nebula-train: frozen: %d of %d tensors, %zu of %zu parameters; training %zu\n", nt - ntr, nt,
               np - ng, np, ng);
    printf("nebula-train: memory: weights %.2f MiB, gradients %.2f MiB, optimizer %.2f MiB\n",
           (double)np * sizeof(float) / mib, (double)nb_part_grad_bytes(p) / mib,
           (double)nb_optim_numel(nb_trainer_optim(tr)) * 2 * sizeof(float) / mib);
}

/* Writes the checkpoint of the run as it stands under root and keeps the
 * newest `keep`. 0, or -1 after logging why. */
static int checkpoint(nb_trainer_t *tr, const char *root, int keep)
{
    char dir[4096], err[2048];
    int done = nb_trainer_steps_done(tr);
    nb_ckpt_step_dir(root, done, dir, sizeof dir);
    if (nb_trainer_save(tr, dir, err, sizeof err) != 0) {
        nb_log_error(NULL, "%s", err);
        return -1;
    }
    printf("nebula-train: checkpoint after %d steps written to %s\n", done, dir);
    fflush(stdout);
    int n = nb_ckpt_prune(root, keep, err, sizeof err);
    if (n < 0) {
        nb_log_error(NULL, "%s", err);
        return -1;
    }
    return 0;
}

static void log_note(void *ud, const char *note)
{
    nb_log_info(NULL, "job.init: %s", note);
}

/* An encoder-decoder job (job.encoder): its own loop (encdec_run.c). */
static int run_encdec(const nb_config_t *cfg, const char *config_path, long steps_override, long stop_after,
                      bool checkpoints, bool eval_only)
{
    if (checkpoints) {
        fprintf(stderr, "nebula-train: --checkpoint and --resume are not supported for an encoder-decoder job "
                        "(job.encoder) yet\n");
        return 2;
    }
    nb_encdec_config_t ec;
    const char *texts[NB_CFG_MAX_TEXTS];
    char err[2048];
    if (nb_encdec_cfg_convert(cfg, &ec, texts, err, sizeof err) != 0) { /* the daemons' conversion too */
        nb_log_error(NULL, "%s", err);
        return NB_CFG_EXIT_CONFIG;
    }
    if (steps_override) {
        ec.steps = (int)steps_override;
        ec.optim.total_steps = ec.steps;
    }
    char why[256];
    nb_backend_t *be = nb_device_open(cfg->n_devices > 0 ? &cfg->devices[0] : NULL, why, sizeof why);
    if (!be) {
        nb_log_error(NULL, "%s", why);
        return 1;
    }
    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    nb_encdec_run_t r = { .config_path = config_path, .stop_after = (int)stop_after,
                          .log_every = (int)cfg->job.log_every, .enc_output = cfg->job.encoder.output,
                          .dec_output = cfg->job.output, .stop = &stop_signal, .eval_only = eval_only };
    int rc = nb_encdec_run(be, &ec, &r);
    nb_be_free(be);
    return rc ? rc : stop_signal ? 128 + stop_signal : 0;
}

int main(int argc, char **argv)
{
    const char *config_path = NULL, *ckpt_out = NULL, *resume = NULL;
    long steps_override = 0, stop_after = 0, ckpt_every = 0, keep = 3;
    bool eval_only = false;
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "steps", required_argument, NULL, 's' },
        { "stop-after", required_argument, NULL, 'S' },
        { "checkpoint", required_argument, NULL, 'k' },
        { "resume", required_argument, NULL, 'r' },
        { "checkpoint-every", required_argument, NULL, 'e' },
        { "keep", required_argument, NULL, 'K' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "eval-only", no_argument, NULL, 'E' },
        { NULL, 0, NULL, 0 },
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "c:s:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': config_path = optarg; break;
        case 's':
        case 'S':
        case 'e':
        case 'K': {
            long v = parse_steps(optarg);
            const char *name = ch == 's' ? "steps" : ch == 'S' ? "stop-after" : ch == 'e' ? "checkpoint-every" : "keep";
            if (v < 0) {
                fprintf(stderr, "nebula-train: --%s must be a positive integer\n", name);
                return 2;
            }
            *(ch == 's' ? &steps_override : ch == 'S' ? &stop_after : ch == 'e' ? &ckpt_every : &keep) = v;
            break;
        }
        case 'k': ckpt_out = optarg; break;
        case 'r': resume = optarg; break;
        case 'E': eval_only = true; break;
        case 'h': usage(); return 0;
        case 'V': {
            char k[96];
            nb_cpu_describe(k, sizeof k);
            printf("nebula-train %s (kernels %s)\n", NB_VERSION, k);
            return 0;
        }
        default: usage(); return 2;
        }
    }
    if (!config_path || optind != argc) {
        usage();
        return 2;
    }
    if (ckpt_every && !ckpt_out) {
        fprintf(stderr, "nebula-train: --checkpoint-every needs --checkpoint ROOT\n");
        return 2;
    }
    nb_log_init("nebula-train", NB_LOG_INFO);
    nb_cpu_level_t level;
    const char *why_level = NULL;
    if (nb_cpu_level_select(&level, &why_level) != 0) {
        nb_log_error(NULL, "%s", why_level);
        return NB_CFG_EXIT_CONFIG;
    }
    static nb_config_t cfg;
    char err[2048];
    if (nb_cfg_load(config_path, &cfg, err, sizeof err) != 0) {
        nb_log_error(NULL, "%s", err);
        return NB_CFG_EXIT_CONFIG;
    }
    nb_log_level_t lvl;
    if (nb_log_level_parse(cfg.log_level, &lvl) == 0)
        nb_log_set_level(lvl);
    if (cfg.role == NB_ROLE_TRAIN && cfg.job.encoder.present)
        return run_encdec(&cfg, config_path, steps_override, stop_after, ckpt_out || resume, eval_only);
    if (eval_only) {
        fprintf(stderr, "nebula-train: %s: --eval-only scores an encoder-decoder job (role train with job.encoder); "
                        "for a model of one part, job.eval reports the held-out loss as it trains\n", config_path);
        return 2;
    }
    nb_train_config_t tc;
    if (to_train_config(&cfg, &tc, err, sizeof err) != 0) {
        nb_log_error(NULL, "%s", err);
        return NB_CFG_EXIT_CONFIG;
    }
    if (steps_override) {
        tc.steps = (int)steps_override;
        tc.optim.total_steps = tc.steps;
    }
    char why[256];
    nb_backend_t *be = nb_device_open(cfg.n_devices > 0 ? &cfg.devices[0] : NULL, why, sizeof why);
    if (!be) {
        nb_log_error(NULL, "%s", why);
        return 1;
    }
    nb_trainer_t *tr = NULL;
    int rc = nb_trainer_new(be, &tc, &tr, err, sizeof err);
    if (rc) {
        nb_log_error(NULL, "%s: %s", config_path, err);
        nb_be_free(be);
        return rc == NB_EINVAL ? NB_CFG_EXIT_CONFIG : 1;
    }
    if (cfg.job.init[0] && !resume) {
        if ((rc = nb_lowrank_init_part(cfg.job.init, nb_trainer_part(tr), log_note, NULL, err, sizeof err)) != 0) {
            nb_log_error(NULL, "%s: job.init: %s", config_path, err);
            nb_trainer_free(tr);
            nb_be_free(be);
            return rc == NB_ENOMEM || rc == NB_EIO ? 1 : NB_CFG_EXIT_CONFIG;
        }
        printf("nebula-train: weights from %s\n", cfg.job.init);
    }
    static char resume_dir[4096];
    if (resume && ((rc = nb_ckpt_find(resume, resume_dir, sizeof resume_dir, err, sizeof err)) != 0 ||
                   (rc = nb_trainer_resume(tr, resume_dir, err, sizeof err)) != 0)) {
        nb_log_error(NULL, "%s", err);
        nb_trainer_free(tr);
        nb_be_free(be);
        return rc == NB_EINVAL ? NB_CFG_EXIT_CONFIG : 1;
    }
    if (resume)
        resume = resume_dir;
    /* what killed writes left behind, and checkpoints beyond --keep (after
     * the resume: the one resumed from may be among the older ones) */
    if (ckpt_out && nb_ckpt_prune(ckpt_out, (int)keep, err, sizeof err) < 0) {
        nb_log_error(NULL, "%s", err);
        nb_trainer_free(tr);
        nb_be_free(be);
        return 1;
    }
    char kernels[NB_CKPT_KERNELS_MAX], advice[256];
    nb_trainer_kernels(tr, kernels, sizeof kernels);
    if (be->iface->kind == NB_DEV_CPU && nb_cpu_blas_advice(advice, sizeof advice))
        nb_log_warn(NULL, "%s", advice);
    if (resume) {
        const char *was = nb_trainer_resumed_kernels(tr);
        if (!*was)
            nb_log_info(NULL, "%s records no kernels; resuming with %s", resume, kernels);
        else if (strcmp(was, kernels) != 0)
            nb_log_warn(NULL, "%s was written with kernels %s, resuming with %s: the kernel level keeps the "
                        "same bits, a different BLAS core type may not (docs/kernels.md)", resume, was, kernels);
    }
    int first_step = nb_trainer_steps_done(tr);
    int end_step = stop_after && stop_after < tc.steps ? (int)stop_after : tc.steps;
    nb_part_t *part = nb_trainer_part(tr);
    printf("nebula-train: %s-LN %s model, %d layers, d_model %d, %d heads, %zu parameters; "
           "batch %d (%d micro-batches) x %d tokens, %d steps, backend %s (kernels %s)\n",
           nb_norm_name(tc.model.norm), nb_head_kind_name(tc.model.head), tc.model.n_layer, tc.model.d_model,
           tc.model.n_head, nb_part_num_params(part), tc.batch, tc.micro_batches, tc.seq_len, tc.steps,
           be->iface->name, kernels);
    print_memory(tr);
    int every = cfg.job.log_every > 0 ? (int)cfg.job.log_every : 1;
    uint64_t n_train, n_eval;
    nb_trainer_split(tr, &n_train, &n_eval);
    int eval_every = (int)cfg.job.eval.every_steps;
    double first_val = NAN, last_val = NAN;
    int last_val_step = -1, first_val_step = -1;
    if (n_eval)
        printf("nebula-train: validation on %llu held-out tokens (%s), %d batches of %d x %d, %s; training on %llu "
               "tokens\n", (unsigned long long)n_eval, cfg.job.eval.data[0] ? cfg.job.eval.data : "the tail of job.data",
               tc.eval_batches ? tc.eval_batches : NB_TRAIN_EVAL_BATCHES_DEFAULT, tc.batch / tc.micro_batches,
               tc.seq_len, eval_every ? "every job.eval.every_steps steps and at the end" : "at the end",
               (unsigned long long)n_train);
    double interval_s = 0, total_s = 0;
    int interval_steps = 0;
    float first_loss = 0, last_loss = 0;
    int skipped = 0, saved_at = -1;
    if (first_step)
        printf("nebula-train: resumed from %s after %d steps\n", resume, first_step);
    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    for (int s = first_step; s < end_step && !stop_signal; s++) {
        nb_train_step_t st;
        rc = nb_trainer_step(tr, &st, err, sizeof err);
        if (rc == 0 || rc == NB_ELIMIT) {
            if (st.skipped)
                nb_log_warn(NULL, "step %d: non-finite gradient norm (%g): update skipped (%d consecutive, "
                            "limit job.max_skipped_steps = %d)", s + 1, st.grad_norm, st.skipped_run,
                            tc.max_skipped_steps ? tc.max_skipped_steps : NB_TRAIN_MAX_SKIPPED_DEFAULT);
            skipped = st.skipped_total;
        }
        if (rc) {
            nb_log_error(NULL, "%s", err);
            break;
        }
        if (s == first_step)
            first_loss = st.loss;
        last_loss = st.loss;
        interval_s += st.seconds;
        total_s += st.seconds;
        interval_steps++;
        bool eval_now = n_eval && ((eval_every && (s + 1) % eval_every == 0) || s + 1 == end_step);
        char val[48] = "";
        if (eval_now) {
            double vl;
            if ((rc = nb_trainer_eval(tr, &vl, err, sizeof err)) != 0) {
                nb_log_error(NULL, "%s", err);
                break;
            }
            if (isnan(first_val)) {
                first_val = vl;
                first_val_step = s + 1;
            }
            last_val = vl;
            last_val_step = s + 1;
            snprintf(val, sizeof val, "  val_loss %.4f", vl);
        }
        if ((s + 1) % every == 0 || s + 1 == end_step || s == first_step || eval_now) {
            double tps = (double)interval_steps * tc.batch * tc.seq_len / (interval_s > 0 ? interval_s : 1e-9);
            printf("step %5d/%d  loss %.4f  lr %.2e  grad_norm %.3f  tokens/s %.0f%s\n", s + 1, tc.steps,
                   st.loss, st.lr, st.grad_norm, tps, val);
            fflush(stdout);
            interval_s = 0;
            interval_steps = 0;
        }
        if (ckpt_every && (s + 1) % ckpt_every == 0 && s + 1 < end_step && !stop_signal) {
            if (checkpoint(tr, ckpt_out, (int)keep) != 0) {
                rc = NB_EIO;
                break;
            }
            saved_at = s + 1;
        }
    }
    int done = nb_trainer_steps_done(tr);
    if (rc == 0) {
        printf("nebula-train: %s after %d steps: loss %.4f -> %.4f in %.1f s (%.0f tokens/s)\n",
               stop_signal ? "interrupted" : done == tc.steps ? "done" : "stopped", done, first_loss,
               last_loss, total_s,
               (double)(done > first_step ? done - first_step : 0) * tc.batch * tc.seq_len /
                   (total_s > 0 ? total_s : 1e-9));
        if (skipped)
            printf("nebula-train: %d steps skipped for a non-finite gradient norm\n", skipped);
        if (last_val_step > 0)
            printf("nebula-train: validation loss %.4f (step %d) -> %.4f (step %d)\n", first_val, first_val_step,
                   last_val, last_val_step);
        /* a run resumed from ROOT/step-N that took no step would rewrite
         * the very checkpoint it resumed from, which is incomplete while
         * it is rewritten: keep it as it is */
        char here[4096], a[PATH_MAX], b[PATH_MAX];
        if (ckpt_out)
            nb_ckpt_step_dir(ckpt_out, done, here, sizeof here);
        bool same = ckpt_out && resume && done == first_step && realpath(resume, a) && realpath(here, b) &&
                    !strcmp(a, b);
        if (same)
            printf("nebula-train: no step taken; the checkpoint resumed from stays %s\n", resume);
        else if (ckpt_out && saved_at != done && checkpoint(tr, ckpt_out, (int)keep) != 0)
            rc = NB_EIO;
        if (rc == 0 && done == tc.steps && cfg.job.output[0]) {
            if ((rc = nb_weights_save(cfg.job.output, part, err, sizeof err)) != 0)
                nb_log_error(NULL, "%s", err);
            else
                printf("nebula-train: weights written to %s\n", cfg.job.output);
        }
    }
    fflush(stdout);
    nb_trainer_free(tr);
    nb_be_free(be);
    if (rc)
        return 1;
    return stop_signal ? 128 + stop_signal : 0;
}
