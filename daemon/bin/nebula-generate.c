/*
 * nebula-generate - samples tokens from a trained GPT (docs/generate.md):
 * the weights file nebula-train writes (or nebula-weights import makes), or
 * a safetensors file with its Nebula metadata or a config.json beside it, or
 * a Hugging Face directory (config.json + model.safetensors).
 *
 * usage: nebula-generate [options] MODEL
 *   --prompt-ids "ID ID ..."   the prompt as token IDs (spaces or commas)
 *   --prompt TEXT              the prompt as text (needs --tokenizer)
 *   --tokenizer DIR            encodes --prompt and decodes the output
 *   --max-new N                tokens to generate (default 32)
 *   --temperature T            0 = greedy (default 1)
 *   --top-k K                  sample among the K most likely (default 0: all)
 *   --seed S                   random stream (default 1)
 *   --ids                      print token IDs even with a tokenizer
 * Output: the prompt and the generated tokens, as text with a tokenizer, else
 * as IDs on one line ("prompt | generated"). Exit status: 0, 1 bad model or
 * input, 2 usage.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "daemon/data/tokenizer.h"
#include "daemon/core/version.h"
#include "daemon/train/generate.h"
#include "daemon/train/hf_model.h"
#include "daemon/train/safetensors.h"
#include "daemon/train/weights.h"
#include "kernels/cpu_level.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: nebula-generate [options] MODEL\n"
               "       nebula-generate --help | --version\n"
               "Samples tokens from a causal language model (a whole GPT with the lm head).\n"
               "MODEL: a Nebula weights file (nebula-train's job.output), a safetensors file\n"
               "(Nebula's export, or beside its config.json) or a Hugging Face directory\n"
               "(config.json + model.safetensors).\n"
               "  --prompt-ids \"ID ID ...\"  the prompt as token IDs (spaces or commas)\n"
               "  --prompt TEXT             the prompt as text; needs --tokenizer\n"
               "  --tokenizer DIR           tokenizer.json, vocab.txt or vocab.json + merges.txt\n"
               "                            (docs/tokenizers.md); the output is decoded to text\n"
               "  --max-new N               tokens to generate (default 32)\n"
               "  --temperature T           softmax temperature; 0 = greedy (default 1)\n"
               "  --top-k K                 sample among the K largest logits (default 0: all)\n"
               "  --seed S                  random stream of the draws (default 1)\n"
               "  --ids                     print token IDs even with a tokenizer\n"
               "The context is the latest max_seq tokens. Same seed, same output.\n"
               "Exit status: 0 done, 1 bad model or input, 2 usage.\n");
}

static void note(void *ud, const char *msg)
{
    (void)ud;
    (void)msg; /* import notes (skipped tensors) are for nebula-weights */
}

/* Builds and fills the whole model from path. */
static int load_model(nb_backend_t *be, const char *path, nb_part_t **out, char *err, size_t errlen)
{
    char st_path[4200], cfg_path[4200];
    struct stat sb;
    bool dir = stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
    nb_model_config_t cfg;
    nb_part_spec_t spec;
    *out = NULL;
    if (!dir) {
        FILE *f = fopen(path, "rb");
        char magic[4] = { 0 };
        if (!f) {
            snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
            return NB_EIO;
        }
        size_t got = fread(magic, 1, 4, f);
        fclose(f);
        if (got == 4 && !memcmp(magic, "NBWT", 4)) {
            nb_weights_info_t info;
            int rc = nb_weights_peek(path, &info, err, errlen);
            if (rc)
                return rc;
            cfg = info.model;
            spec = info.spec;
            nb_weights_info_free(&info);
            nb_part_spec_t full = nb_part_spec_full(&cfg);
            if (spec.embed != full.embed || spec.first != 0 || spec.last != cfg.n_layer || !spec.head) {
                snprintf(err, errlen, "%s: holds one pipeline stage (blocks %d..%d of %d): generation needs the "
                         "whole model", path, spec.first, spec.last - 1, cfg.n_layer);
                return NB_EINVAL;
            }
            if ((rc = nb_part_new(be, &cfg, &spec, 0, NULL, out, err, errlen)))
                return rc;
            if ((rc = nb_weights_load(path, *out, err, errlen))) {
                nb_part_free(*out);
                *out = NULL;
            }
            return rc;
        }
    }
    if (dir) {
        snprintf(st_path, sizeof st_path, "%s/model.safetensors", path);
        snprintf(cfg_path, sizeof cfg_path, "%s/config.json", path);
    } else {
        const char *slash = strrchr(path, '/');
        snprintf(st_path, sizeof st_path, "%s", path);
        snprintf(cfg_path, sizeof cfg_path, "%.*s/config.json", slash ? (int)(slash - path) : 1, slash ? path : ".");
    }
    nb_st_file_t *f;
    nb_hf_names_t names;
    int rc = nb_st_open(st_path, &f, err, errlen);
    if (rc)
        return rc;
    rc = dir ? 0 : nb_hf_config_from_metadata(f, &cfg, &spec, &names, err, errlen);
    if (rc == 0) {
        rc = nb_hf_config_read(cfg_path, &cfg, &names, err, errlen);
        spec = nb_part_spec_full(&cfg);
    }
    if (rc < 0)
        goto out;
    if (spec.first != 0 || spec.last != cfg.n_layer || !spec.embed || !spec.head) {
        snprintf(err, errlen, "%.800s: holds one pipeline stage (blocks %d..%d of %d): generation needs the whole "
                 "model", st_path, spec.first, spec.last - 1, cfg.n_layer);
        rc = NB_EINVAL;
        goto out;
    }
    if ((rc = nb_part_new(be, &cfg, &spec, 0, NULL, out, err, errlen)))
        goto out;
    if ((rc = nb_hf_load(f, names, *out, note, NULL, err, errlen))) {
        nb_part_free(*out);
        *out = NULL;
    }
out:
    nb_st_close(f);
    return rc;
}

static bool parse_ids(const char *s, int32_t **ids, size_t *n)
{
    size_t cap = strlen(s) / 2 + 2;
    *ids = malloc(cap * sizeof **ids);
    *n = 0;
    if (!*ids)
        return false;
    while (*s) {
        if (*s == ' ' || *s == ',' || *s == '\t' || *s == '\n') {
            s++;
            continue;
        }
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX || *n >= cap)
            return false;
        (*ids)[(*n)++] = (int32_t)v;
        s = end;
    }
    return true;
}

static bool num_arg(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !(v >= lo && v <= hi))
        return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage(stdout);
        return 0;
    }
    if (argc == 2 && !strcmp(argv[1], "--version")) {
        printf("nebula-generate %s\n", NB_VERSION);
        return 0;
    }
    const char *model = NULL, *prompt = NULL, *prompt_ids = NULL, *tok_dir = NULL;
    nb_gen_config_t gc = { .max_new = 32, .temperature = 1.0f, .top_k = 0, .seed = 1 };
    bool print_ids = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        double v;
        bool has = i + 1 < argc;
        if (!strcmp(a, "--prompt") && has)
            prompt = argv[++i];
        else if (!strcmp(a, "--prompt-ids") && has)
            prompt_ids = argv[++i];
        else if (!strcmp(a, "--tokenizer") && has)
            tok_dir = argv[++i];
        else if (!strcmp(a, "--ids"))
            print_ids = true;
        else if (!strcmp(a, "--max-new") && has && num_arg(argv[i + 1], 0, 1 << 20, &v) && v == (int)v)
            gc.max_new = (int)v, i++;
        else if (!strcmp(a, "--temperature") && has && num_arg(argv[i + 1], 0, 1e6, &v))
            gc.temperature = (float)v, i++;
        else if (!strcmp(a, "--top-k") && has && num_arg(argv[i + 1], 0, 1 << 24, &v) && v == (int)v)
            gc.top_k = (int)v, i++;
        else if (!strcmp(a, "--seed") && has && num_arg(argv[i + 1], 0, 1.8e19, &v) && v == (double)(uint64_t)v)
            gc.seed = (uint64_t)v, i++;
        else if (a[0] != '-' && !model)
            model = a;
        else {
            fprintf(stderr, "nebula-generate: bad argument '%s'%s\n", a,
                    a[0] == '-' && !has ? " (missing its value)" : "");
            usage(stderr);
            return 2;
        }
    }
    if (!model || (!prompt == !prompt_ids) || (prompt && !tok_dir)) {
        fprintf(stderr, "nebula-generate: give MODEL and one of --prompt-ids, or --prompt with --tokenizer\n");
        usage(stderr);
        return 2;
    }
    nb_cpu_level_t level;
    const char *why_level = NULL;
    if (nb_cpu_level_select(&level, &why_level) != 0) {
        fprintf(stderr, "nebula-generate: %s\n", why_level);
        return 2;
    }
    char err[1024];
    int status = 1;
    nb_tokenizer_t *tk = NULL;
    nb_backend_t *be = nb_cpu_backend_new_at(level);
    nb_part_t *p = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    if (tok_dir && nb_tokenizer_load(tok_dir, &tk, err, sizeof err)) {
        fprintf(stderr, "nebula-generate: %s\n", err);
        goto done;
    }
    if (prompt_ids) {
        if (!parse_ids(prompt_ids, &ids, &n)) {
            fprintf(stderr, "nebula-generate: --prompt-ids '%s': expected token IDs (non-negative integers)\n",
                    prompt_ids);
            status = 2;
            goto done;
        }
    } else {
        nb_idvec_t v = { 0 };
        if (nb_tokenizer_encode(tk, prompt, strlen(prompt), &v, err, sizeof err)) {
            fprintf(stderr, "nebula-generate: --prompt: %s\n", err);
            free(v.ids);
            goto done;
        }
        ids = malloc((v.n + 1) * sizeof *ids);
        for (size_t i = 0; ids && i < v.n; i++)
            ids[i] = (int32_t)v.ids[i];
        n = v.n;
        free(v.ids);
    }
    int32_t *all = ids ? realloc(ids, (n + (size_t)gc.max_new + 1) * sizeof *ids) : NULL;
    if (!all || !be) {
        fprintf(stderr, "nebula-generate: out of memory\n");
        goto done;
    }
    ids = all;
    if (load_model(be, model, &p, err, sizeof err)) {
        fprintf(stderr, "nebula-generate: %s\n", err);
        goto done;
    }
    if (tk && nb_tokenizer_vocab(tk) > (uint32_t)nb_part_config(p)->vocab) {
        fprintf(stderr, "nebula-generate: the tokenizer's vocabulary (%u) is larger than the model's (%d)\n",
                nb_tokenizer_vocab(tk), nb_part_config(p)->vocab);
        goto done;
    }
    size_t n_prompt = n;
    if (nb_gen_run(p, ids, &n, n + (size_t)gc.max_new, &gc, err, sizeof err)) {
        fprintf(stderr, "nebula-generate: %s: %s\n", model, err);
        goto done;
    }
    if (tk && !print_ids) {
        uint32_t *u = malloc(n * sizeof *u);
        char *text = NULL;
        size_t len = 0;
        for (size_t i = 0; u && i < n; i++)
            u[i] = (uint32_t)ids[i];
        /* a token of the model beyond the tokenizer's vocabulary cannot be
         * decoded: refused by the decoder with its ID */
        if (!u || nb_tokenizer_decode(tk, u, n, &text, &len, err, sizeof err)) {
            fprintf(stderr, "nebula-generate: decode: %s\n", u ? err : "out of memory");
            free(u);
            goto done;
        }
        fwrite(text, 1, len, stdout);
        printf("\n");
        free(text);
        free(u);
    } else {
        for (size_t i = 0; i < n; i++)
            printf(i == 0 ? "%d" : i == n_prompt ? " | %d" : " %d", ids[i]);
        if (n == n_prompt)
            printf(" |");
        printf("\n");
    }
    status = 0;
done:
    free(ids);
    nb_part_free(p);
    nb_be_free(be);
    nb_tokenizer_free(tk);
    return status;
}
