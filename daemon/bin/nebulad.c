/*
 * nebulad.c - the Nebula daemon: one per cluster, coordinator or stage as its
 * YAML file says. Exit status: 0 orderly stop, 1 failure at run time,
 * 2 bad command line, 78 (EX_CONFIG) configuration error.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include "daemon/config/config.h"
#include "daemon/log.h"
#include "daemon/net/ktls.h"
#include "daemon/net/tls.h"
#include "daemon/pipeline/coord_rt.h"
#include "daemon/pipeline/electra_rt.h"
#include "daemon/pipeline/encdec_rt.h"
#include "daemon/pipeline/stage_rt.h"
#include "daemon/core/memory.h"
#include "daemon/service/service.h"
#include "daemon/core/version.h"
#include "kernels/common.h"
#include "kernels/cpu_level.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nebulad --config FILE       run the daemon (coordinator or stage, from FILE)\n"
            "       nebulad --check-config FILE validate FILE and load the TLS files it names,\n"
            "                                   print \"ok\" and exit\n"
            "       nebulad --check-syntax FILE validate FILE only (e.g. a file for another host)\n"
            "       nebulad --help | --version\n"
            "\n"
            "Signals: SIGTERM/SIGINT stop in order; SIGHUP reloads (log level; other\n"
            "changes are named in the log and need a restart).\n"
            "Exit status: 0 stopped, 1 failed while running, 2 usage, 78 bad configuration.\n"
            "Environment: " NB_CPU_LEVEL_ENV "=generic|avx2|avx512 runs the CPU kernels at a lower\n"
            "level (the same bits, slower; docs/kernels.md).\n"
            "Configuration keys: docs/config.md, nebula.yaml(5). Operations: nebulad(8).\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "check-config", required_argument, NULL, 'k' },
        { "check-syntax", required_argument, NULL, 's' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { 0 },
    };
    const char *path = NULL;
    bool check = false, files = true;
    int o;
    while ((o = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
        switch (o) {
        case 'c': path = optarg; break;
        case 'k': path = optarg; check = true; break;
        case 's': path = optarg; check = true; files = false; break;
        case 'h': usage(stdout); return 0;
        case 'V': {
            char k[96];
            nb_cpu_describe(k, sizeof k);
            printf("nebulad %s (kernels %s)\n", NB_VERSION, k);
            return 0;
        }
        default: usage(stderr); return 2;
        }
    }
    if (!path || optind != argc) {
        usage(stderr);
        return 2;
    }
    static nb_config_t cfg;
    char err[1024];
    if (nb_cfg_load(path, &cfg, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return NB_CFG_EXIT_CONFIG;
    }
    nb_cpu_level_t level;
    const char *why_level = NULL;
    if (nb_cpu_level_select(&level, &why_level) != 0) {
        fprintf(stderr, "nebulad: %s\n", why_level);
        return NB_CFG_EXIT_CONFIG;
    }
    if (cfg.role == NB_ROLE_TRAIN) {
        fprintf(stderr, "%s: role train is run by nebula-train; nebulad runs role coordinator or stage\n", path);
        return NB_CFG_EXIT_CONFIG;
    }
    if (check && files) {
        /* The daemon itself starts with unreadable TLS files (each
         * connection then fails, naming the file and the reason, until they
         * are fixed); the check that systemd runs before it refuses them. */
        const nb_tls_files_t tf = { cfg.tls.cert, cfg.tls.key, cfg.tls.ca };
        if (nb_tls_check_files(&tf, err, sizeof err) != 0) {
            fprintf(stderr, "%s: tls: %s\n", path, err);
            return NB_CFG_EXIT_CONFIG;
        }
    }
    const char *kwhy;
    if (files && cfg.tls.ktls == NB_KTLS_ON && !nb_ktls_available(&kwhy)) {
        fprintf(stderr, "%s: tls.ktls: on, but %s\n", path, kwhy);
        return NB_CFG_EXIT_CONFIG;
    }
    if (check) {
        printf("ok\n");
        return 0;
    }
    nb_log_level_t lvl = NB_LOG_INFO;
    nb_log_level_parse(cfg.log_level, &lvl);
    nb_log_init(cfg.name, lvl);
    char kernels[96];
    nb_cpu_describe(kernels, sizeof kernels);
    nb_log_info(NULL, "nebulad %s, kernels %s", NB_VERSION, kernels);
    char memmsg[128];
    nb_mem_bound_process(memmsg, sizeof memmsg);
    if (memmsg[0])
        nb_log_info(NULL, "%s", memmsg);
    char advice[256];
    if (nb_cpu_blas_advice(advice, sizeof advice))
        nb_log_warn(NULL, "%s", advice);
    {
        /* Not fatal here: the transport re-reads the files for every
         * connection, so files put in place later are picked up. */
        const nb_tls_files_t tf = { cfg.tls.cert, cfg.tls.key, cfg.tls.ca };
        char terr[1024];
        if (nb_tls_check_files(&tf, terr, sizeof terr) != 0)
            nb_log_warn(NULL, "TLS files: %s; every connection fails until this is fixed", terr);
    }
    /* A status client that hangs up mid-reply must not kill the daemon. */
    signal(SIGPIPE, SIG_IGN);

    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        nb_log_error(NULL, "cannot create the event loop");
        return 1;
    }
    nb_service_t *svc;
    int rc = nb_service_new(&cfg, &loop, &svc);
    if (rc) {
        nb_log_error(NULL, "cannot create the service: %s", nb_strerror(rc));
        return 1;
    }
    /* The role's runtime: the coordinator drives the job, a stage runs its
     * part of the model. */
    nb_coord_rt_t *coord = NULL;
    nb_stage_rt_t *stage = NULL;
    nb_electra_disc_rt_t *edisc = NULL; /* an ELECTRA job: the discriminator's daemon coordinates it */
    nb_electra_gen_rt_t *egen = NULL;
    nb_encdec_dec_rt_t *edec = NULL; /* an encoder-decoder job: the decoder's daemon coordinates it */
    nb_encdec_enc_rt_t *eenc = NULL;
    if (cfg.role == NB_ROLE_COORDINATOR && cfg.job.electra.n_generators > 0)
        rc = nb_electra_disc_rt_attach(svc, &edisc);
    else if (cfg.role == NB_ROLE_STAGE && cfg.electra_generator)
        rc = nb_electra_gen_rt_attach(svc, &egen);
    else if (cfg.role == NB_ROLE_COORDINATOR && cfg.job.encoder.present)
        rc = nb_encdec_dec_rt_attach(svc, &edec);
    else if (cfg.role == NB_ROLE_STAGE && cfg.encdec_encoder)
        rc = nb_encdec_enc_rt_attach(svc, &eenc);
    else
        rc = cfg.role == NB_ROLE_COORDINATOR ? nb_coord_rt_attach(svc, &coord) : nb_stage_rt_attach(svc, &stage);
    if (rc) {
        nb_log_error(NULL, "cannot create the %s runtime: %s", nb_cfg_role_name(cfg.role), nb_strerror(rc));
        nb_service_free(svc);
        return 1;
    }
    if (nb_service_start(svc, err, sizeof err) != 0)
        nb_log_error(NULL, "start failed: %s", err);
    int status = nb_service_run(svc);
    nb_stage_rt_free(stage);
    nb_coord_rt_free(coord);
    nb_electra_disc_rt_free(edisc);
    nb_electra_gen_rt_free(egen);
    nb_encdec_dec_rt_free(edec);
    nb_encdec_enc_rt_free(eenc);
    nb_service_free(svc);
    if (uv_loop_close(&loop) != 0)
        nb_log_warn(NULL, "event loop closed with handles still open");
    return status;
}
