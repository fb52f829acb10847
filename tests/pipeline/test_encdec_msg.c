/* test_encdec_msg.c - the encoder-decoder job across daemons, message
 * level: the job digest covers the texts' and the tokenizer's bytes, not
 * their paths (equal copies elsewhere give the same digest; one byte
 * changed, or a tokenizer_config.json beside vocab.txt changed, another),
 * a refusal names the part that differs, and the step deadline expires
 * only past its limit, naming the peer, what was awaited and the key. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "daemon/clock.h"
#include "daemon/pipeline/encdec_msg.h"
#include "kernels/common.h"

static char g_dir[128];

static void put(const char *sub, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, sub);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/%s/%s", g_dir, sub, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* The inputs' digest of texts a/NAME, b/NAME (sub-directories of g_dir)
 * and tokenizer directory tok. */
static void digest_of(const char *ta, const char *tb, const char *tok, nb_encdec_inputs_t *in)
{
    char p0[512], p1[512], pt[512], err[1024];
    snprintf(p0, sizeof p0, "%s/%s", g_dir, ta);
    snprintf(p1, sizeof p1, "%s/%s", g_dir, tb);
    snprintf(pt, sizeof pt, "%s/%s", g_dir, tok);
    const char *texts[2] = { p0, p1 };
    nb_encdec_config_t ec;
    memset(&ec, 0, sizeof ec);
    ec.task.texts = texts;
    ec.task.n_texts = 2;
    ec.task.tokenizer = pt;
    assert_int_equal(nb_encdec_inputs_hash(&ec, in, err, sizeof err), 0);
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "%s/nb-encdec-msg.XXXXXX", P_tmpdir);
    if (!mkdtemp(g_dir))
        return -1;
    put("one", "Apache-2.0", "Licensed under the Apache License\n");
    put("one", "MPL-2.0", "Mozilla Public License\n");
    put("two", "Apache-2.0", "Licensed under the Apache License\n");  /* equal, elsewhere */
    put("three", "Apache-2.0", "Licensed under the Apache Licence\n"); /* one byte off */
    put("tok1", "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n");
    put("tok2", "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n");
    put("tok3", "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n");
    put("tok3", "tokenizer_config.json", "{\"do_lower_case\": false}\n");
    put("tok4", "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n");
    put("tok4", "merges.txt", "unused beside vocab.txt\n");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_inputs_by_content(void **state)
{
    (void)state;
    nb_encdec_inputs_t a, b, c, t3, t4;
    digest_of("one/Apache-2.0", "one/MPL-2.0", "tok1", &a);
    digest_of("two/Apache-2.0", "one/MPL-2.0", "tok2", &b);
    digest_of("three/Apache-2.0", "one/MPL-2.0", "tok1", &c);
    digest_of("one/Apache-2.0", "one/MPL-2.0", "tok3", &t3);
    digest_of("one/Apache-2.0", "one/MPL-2.0", "tok4", &t4);
    assert_string_equal(a.texts16, b.texts16); /* the content matters, not the path */
    assert_string_equal(a.tok16, b.tok16);
    assert_string_not_equal(a.texts16, c.texts16);
    assert_string_equal(a.tok16, c.tok16);
    assert_string_not_equal(a.tok16, t3.tok16); /* the lower-casing file beside vocab.txt counts */
    assert_int_equal(t3.n_tok, 2);
    assert_string_equal(a.tok16, t4.tok16);     /* a file the tokenizer does not read does not */
    assert_int_equal(t4.n_tok, 1);

    char settings[17] = "0123456789abcdef", da[NB_ENCDEC_DIGEST_LEN], dc[NB_ENCDEC_DIGEST_LEN];
    nb_encdec_job_digest(settings, &a, da);
    nb_encdec_job_digest(settings, &c, dc);
    assert_int_equal(strlen(da), NB_ENCDEC_DIGEST_LEN - 1);
    char why[256];
    nb_encdec_digest_diff(da, dc, why, sizeof why);
    assert_string_equal(why, "the texts' contents (job.spans.text)");
    nb_encdec_digest_diff(da, da, why, sizeof why);
    assert_string_equal(why, "");

    char err[1024], p[512];
    snprintf(p, sizeof p, "%s/none", g_dir);
    const char *texts[1] = { p };
    nb_encdec_config_t ec;
    memset(&ec, 0, sizeof ec);
    ec.task.texts = texts;
    ec.task.n_texts = 1;
    nb_encdec_inputs_t in;
    assert_int_equal(nb_encdec_inputs_hash(&ec, &in, err, sizeof err), NB_EIO);
    assert_non_null(strstr(err, "job.spans.text: "));
    assert_non_null(strstr(err, "/none: cannot read"));
}

static void test_digest_diff_names_parts(void **state)
{
    (void)state;
    const char *mine = "aaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-cccccccccccccccc";
    char why[256];
    nb_encdec_digest_diff(mine, "aaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-dddddddddddddddd", why, sizeof why);
    assert_string_equal(why, "the tokenizer's files (job.spans.tokenizer)");
    nb_encdec_digest_diff(mine, "eeeeeeeeeeeeeeee-bbbbbbbbbbbbbbbb-dddddddddddddddd", why, sizeof why);
    assert_string_equal(why, "the settings and the tokenizer's files (job.spans.tokenizer)");
    nb_encdec_digest_diff(mine, "eeeeeeeeeeeeeeee-ffffffffffffffff-dddddddddddddddd", why, sizeof why);
    assert_string_equal(why, "the settings, the texts' contents (job.spans.text) and the tokenizer's files "
                             "(job.spans.tokenizer)");
    nb_encdec_digest_diff(mine, "0123456789abcdef", why, sizeof why); /* an older peer's form */
    assert_string_equal(why, "the settings");
    nb_encdec_digest_diff(mine, "", why, sizeof why);
    assert_string_equal(why, "the settings");
}

/* job.model.token_shift and job.encoder.model.token_shift enter the
 * settings' digest: two daemons that differ in either are refused. */
static void test_token_shift_digest(void **state)
{
    (void)state;
    nb_encdec_config_t ec;
    memset(&ec, 0, sizeof ec);
    nb_model_config_t m = { .n_layer = 1, .d_model = 32, .n_head = 2, .d_ff = 128, .vocab = 300, .max_seq = 32 };
    ec.enc.model = m;
    ec.dec.model = m;
    ec.dec.model.cross_attn = true;
    char plain[17], again[17], enc[17], dec[17];
    nb_encdec_cfg_digest(&ec, "fp32", "fp32", plain);
    nb_encdec_cfg_digest(&ec, "fp32", "fp32", again);
    assert_string_equal(plain, again);
    ec.enc.model.token_shift = true;
    nb_encdec_cfg_digest(&ec, "fp32", "fp32", enc);
    ec.enc.model.token_shift = false;
    ec.dec.model.token_shift = true;
    nb_encdec_cfg_digest(&ec, "fp32", "fp32", dec);
    assert_string_not_equal(plain, enc);
    assert_string_not_equal(plain, dec);
    assert_string_not_equal(enc, dec);
    /* and the configuration's settings reach both models */
    static nb_config_t cfg;
    char err[512];
    const char *texts[8];
    if (nb_cfg_load("config/finetune/encdec-minilm.yaml", &cfg, err, sizeof err))
        fail_msg("%s", err);
    cfg.job.encoder.model.token_shift = true;
    if (nb_encdec_cfg_convert(&cfg, &ec, texts, err, sizeof err))
        fail_msg("%s", err);
    assert_true(ec.enc.model.token_shift);
    assert_false(ec.dec.model.token_shift);
    cfg.job.encoder.model.token_shift = false;
    cfg.job.model.token_shift = true;
    if (nb_encdec_cfg_convert(&cfg, &ec, texts, err, sizeof err))
        fail_msg("%s", err);
    assert_false(ec.enc.model.token_shift);
    assert_true(ec.dec.model.token_shift);
}

static void test_wait_deadline(void **state)
{
    (void)state;
    nb_encdec_wait_t w;
    memset(&w, 0, sizeof w);
    char why[512];
    assert_false(nb_encdec_wait_expired(&w, nb_mono_s() + 1e6, "the encoder's daemon", "enc", why, sizeof why));
    nb_encdec_wait_set(&w, 8, NB_ENCDEC_STEP_KEY, "report of step %d", 3);
    assert_false(nb_encdec_wait_expired(&w, w.since + 7.9, "the encoder's daemon", "enc", why, sizeof why));
    assert_true(nb_encdec_wait_expired(&w, w.since + 8.1, "the encoder's daemon", "enc", why, sizeof why));
    assert_non_null(strstr(why, "the encoder's daemon enc sent no report of step 3 within 8 s "
                                "(4 x heartbeat_timeout_s)"));
    nb_encdec_wait_clear(&w);
    assert_false(nb_encdec_wait_expired(&w, w.since + 100, "the encoder's daemon", "enc", why, sizeof why));
    nb_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.heartbeat_timeout_s = 2.5;
    assert_true(nb_encdec_step_deadline_s(&cfg) == 10.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inputs_by_content),
        cmocka_unit_test(test_digest_diff_names_parts),
        cmocka_unit_test(test_token_shift_digest),
        cmocka_unit_test(test_wait_deadline),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
