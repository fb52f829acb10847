/*
 * nebula-electra - multi-generator ELECTRA in one process: the single-
 * process reference of the electra job (docs/electra.md).
 *
 * usage: nebula-electra --config FILE [--steps N]
 * Reads a YAML file with role: train and a job.electra section
 * (docs/config.md): job.model is the discriminator (head tokcls, 2
 * classes), each job.electra.generators[] entry a generator with its own
 * model (head mlm), token file, seed and optimizer. Prints one line every
 * job.log_every steps:
 *   step S/N  gen NAME loss L ...  disc loss L acc A  replaced R%  wire B/token  tokens/s X
 * and writes the discriminator's weights to job.output (when set) at the
 * end, for a later fine-tune to start from (job.init).
 *   --steps N   train N steps instead of job.steps (the LR schedules follow)
 * SIGINT/SIGTERM stop after the current step (no weights written) with exit
 * status 128 + signal.
 * Exit status: 0 done, 1 runtime error, 2 bad usage, 78 bad configuration.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/service/device.h"
#include "daemon/config/config.h"
#include "daemon/log.h"
#include "daemon/pipeline/electra_msg.h"
#include "daemon/train/electra.h"
#include "daemon/train/weights.h"
#include "daemon/core/version.h"
#include "kernels/cpu_level.h"

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) { stop_signal = sig; }

static void usage(void)
{
    fprintf(stderr, "usage: nebula-electra --config FILE [--steps N]\n"
                    "       nebula-electra --help | --version\n");
}

/* Maps the loaded job onto the ELECTRA config (the conversion the
 * discriminator's daemon uses too); -1 with a message when the file is not
 * an electra job. */
static int to_electra_config(const nb_config_t *cfg, int steps, nb_electra_config_t *ec, char *err, size_t errlen)
{
    if (cfg->role != NB_ROLE_TRAIN || !cfg->job.present || cfg->job.electra.n_generators == 0) {
        snprintf(err, errlen, "%s: role must be train with a job.electra section for nebula-electra", cfg->path);
        return -1;
    }
    return nb_electra_cfg_convert(cfg, steps, ec, err, errlen);
}

int main(int argc, char **argv)
{
    const char *config_path = NULL;
    long steps_override = 0;
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "steps", required_argument, NULL, 's' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "c:s:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': config_path = optarg; break;
        case 's': {
            char *end;
            steps_override = strtol(optarg, &end, 10);
            if (*end || end == optarg || steps_override <= 0 || steps_override > 100000000) {
                fprintf(stderr, "nebula-electra: --steps must be a positive integer\n");
                return 2;
            }
            break;
        }
        case 'h': usage(); return 0;
        case 'V': printf("nebula-electra %s\n", NB_VERSION); return 0;
        default: usage(); return 2;
        }
    }
    if (!config_path || optind != argc) {
        usage();
        return 2;
    }
    nb_log_init("nebula-electra", NB_LOG_INFO);
    nb_cpu_level_t level;
    const char *why_level = NULL;
    if (nb_cpu_level_select(&level, &why_level) != 0) {
        nb_log_error(NULL, "%s", why_level);
        return NB_CFG_EXIT_CONFIG;
    }
    static nb_config_t cfg;
    static nb_electra_config_t ec;
    char err[2048];
    if (nb_cfg_load(config_path, &cfg, err, sizeof err) != 0) {
        nb_log_error(NULL, "%s", err);
        return NB_CFG_EXIT_CONFIG;
    }
    int steps = steps_override ? (int)steps_override : (int)cfg.job.steps;
    if (to_electra_config(&cfg, steps, &ec, err, sizeof err) != 0) {
        nb_log_error(NULL, "%s", err);
        return NB_CFG_EXIT_CONFIG;
    }
    char why[256];
    nb_backend_t *be = nb_device_open(cfg.n_devices > 0 ? &cfg.devices[0] : NULL, why, sizeof why);
    if (!be) {
        nb_log_error(NULL, "%s", why);
        return 1;
    }
    nb_electra_t *e = NULL;
    int rc = nb_electra_new(be, &ec, &e, err, sizeof err);
    if (rc) {
        nb_log_error(NULL, "%s: %s", config_path, err);
        nb_be_free(be);
        return rc == NB_EINVAL ? NB_CFG_EXIT_CONFIG : 1;
    }
    printf("nebula-electra: discriminator %d layers, d_model %d, %zu parameters; %d generators; %d x %d tokens "
           "per step, %d steps, disc_weight %g, %s embeddings, backend %s\n", ec.model.n_layer, ec.model.d_model,
           nb_part_num_params(nb_electra_disc_part(nb_electra_disc(e))), ec.n_gen, (int)cfg.job.batch, ec.seq_len,
           steps, cfg.job.electra.disc_weight, ec.tie_embeddings ? "tied" : "untied", be->iface->name);
    for (int i = 0; i < ec.n_gen; i++)
        printf("nebula-electra: generator %d '%s': %d layers, d_model %d, %zu parameters, %d sequences per step, "
               "data %s (vocabulary %u)\n", i, ec.gen[i].name, ec.gen[i].model.n_layer, ec.gen[i].model.d_model,
               nb_part_num_params(nb_electra_gen_part(nb_electra_gen(e, i))), ec.gen[i].sequences, ec.gen[i].data,
               nb_electra_gen_vocab(nb_electra_gen(e, i)));
    fflush(stdout);
    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int every = cfg.job.log_every > 0 ? (int)cfg.job.log_every : 1;
    double total_s = 0, wire = 0, toks = 0;
    float first_disc = 0, last_disc = 0;
    for (int s = 0; s < steps && !stop_signal; s++) {
        nb_electra_step_t st;
        if ((rc = nb_electra_step(e, &st, err, sizeof err)) != 0) {
            nb_log_error(NULL, "%s", err);
            break;
        }
        if (st.skipped)
            nb_log_warn(NULL, "step %d: %d model updates skipped for a non-finite gradient norm", s + 1, st.skipped);
        total_s += st.seconds;
        wire += (double)st.wire_bytes;
        toks += (double)st.tokens;
        if (s == 0)
            first_disc = st.disc_loss;
        last_disc = st.disc_loss;
        if ((s + 1) % every == 0 || s == 0 || s + 1 == steps) {
            printf("step %5d/%d ", s + 1, steps);
            for (int i = 0; i < ec.n_gen; i++)
                printf(" gen %s loss %.4f", ec.gen[i].name, st.gen_loss[i]);
            printf("  disc loss %.4f acc %.3f  replaced %.1f%%  wire %.3f B/token  tokens/s %.0f\n", st.disc_loss,
                   st.disc_acc, 100.0 * (double)st.replaced / (double)st.tokens,
                   (double)st.wire_bytes / (double)st.tokens, (double)st.tokens / (st.seconds > 0 ? st.seconds : 1e-9));
            fflush(stdout);
        }
    }
    if (rc == 0) {
        int done = nb_electra_steps_done(e);
        printf("nebula-electra: %s after %d steps: disc loss %.4f -> %.4f in %.1f s; %.3f wire bytes per "
               "discriminator token\n", stop_signal ? "interrupted" : "done", done, first_disc, last_disc, total_s,
               toks > 0 ? wire / toks : 0.0);
        if (!stop_signal && cfg.job.output[0]) {
            if ((rc = nb_weights_save(cfg.job.output, nb_electra_disc_part(nb_electra_disc(e)), err, sizeof err)))
                nb_log_error(NULL, "%s", err);
            else
                printf("nebula-electra: discriminator weights written to %s\n", cfg.job.output);
        }
    }
    fflush(stdout);
    nb_electra_free(e);
    nb_be_free(be);
    if (rc)
        return 1;
    return stop_signal ? 128 + stop_signal : 0;
}
