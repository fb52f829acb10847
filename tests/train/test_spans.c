/* test_spans.c - the span-restoration task (daemon/train/spans.h) on real
 * text (tests/data/tokenizers/sample.txt with the MiniLM WordPiece
 * vocabulary): every pair is a window of the text with one span cut out
 * and the span as the target; training windows never touch a held-out
 * window; the same key gives the same pairs; the scores; the refusals. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/train/spans.h"
#include "kernels/common.h"

#define TEXT "tests/data/tokenizers/sample.txt"
#define VOCAB "tests/data/tokenizers/minilm"
#define SRC 18 /* windows of 16 tokens */
#define HOLD 4

static const char *const texts[] = { TEXT };
static nb_idvec_t file_ids; /* the text as the task tokenizes it */

static nb_spans_config_t base(void)
{
    return (nb_spans_config_t){ .texts = texts, .n_texts = 1, .tokenizer = VOCAB, .src_len = SRC, .min_tokens = 1,
                                .max_tokens = 3, .hold = HOLD };
}

static int setup(void **state)
{
    (void)state;
    nb_tokenizer_t *t;
    char err[256];
    if (nb_tokenizer_load(VOCAB, &t, err, sizeof err))
        fail_msg("%s", err);
    FILE *f = fopen(TEXT, "rb");
    assert_non_null(f);
    static char text[1 << 14];
    size_t n = fread(text, 1, sizeof text, f);
    fclose(f);
    assert_int_equal(nb_tokenizer_encode(t, text, n, &file_ids, err, sizeof err), 0);
    /* the text writes [SEP] literally: the task reads it as [UNK] */
    int literal = 0;
    for (size_t i = 0; i < file_ids.n; i++)
        if (file_ids.ids[i] == 101 || file_ids.ids[i] == 102 || file_ids.ids[i] == 103 || file_ids.ids[i] == 0) {
            file_ids.ids[i] = 100;
            literal++;
        }
    assert_true(literal > 0);
    nb_tokenizer_free(t);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    free(file_ids.ids);
    return 0;
}

/* Whether a window at token p of the text lies in a run of training
 * windows (held = false) or is exactly one held-out window (held = true). */
static bool placed(long p, bool held)
{
    long W = SRC - 2;
    if (held)
        return p % W == 0 && (p / W) % HOLD == HOLD - 1;
    for (long k = p / W; k <= (p + W - 1) / W; k++)
        if (k % HOLD == HOLD - 1)
            return false;
    return true;
}

/* Rebuilds row r's window (source with [MASK] replaced by the span) and
 * returns where in the text it starts (a match where `placed` says it may
 * be: the text repeats itself, e.g. runs of [UNK]; -1 when none). */
static long window_of(const nb_spans_t *sp, const nb_spans_batch_t *b, int r, int32_t mask, int32_t cls, bool held)
{
    int32_t w[SRC];
    int n = 0, L = b->span_len[r];
    const int32_t *src = b->src + (size_t)r * b->S, *tgt = b->dec_tgt + (size_t)r * b->T,
                  *din = b->dec_in + (size_t)r * b->T;
    assert_int_equal(src[0], cls);
    assert_int_equal(din[0], cls);
    assert_int_equal(tgt[L], nb_spans_eos(sp));
    int masks = 0;
    for (int i = 1; i < b->S && b->src_mask[(size_t)r * b->S + i]; i++) {
        if (src[i] == nb_spans_eos(sp))
            break;
        if (src[i] == mask) {
            masks++;
            for (int k = 0; k < L; k++) {
                w[n++] = tgt[k];
                assert_int_equal(din[1 + k], tgt[k]); /* teacher forcing: the target shifted by one */
            }
        } else {
            w[n++] = src[i];
        }
    }
    assert_int_equal(masks, 1);
    assert_int_equal(n, SRC - 2);
    for (int i = L + 1; i < b->T; i++)
        assert_int_equal(tgt[i], -1);
    for (size_t p = 0; p + (size_t)n <= file_ids.n; p++) {
        int k = 0;
        while (k < n && (uint32_t)w[k] == file_ids.ids[p + k])
            k++;
        if (k == n && placed((long)p, held))
            return (long)p;
    }
    return -1;
}

static void test_pairs(void **state)
{
    (void)state;
    nb_spans_config_t c = base();
    nb_spans_t *sp;
    char err[512];
    if (nb_spans_open(&c, &sp, err, sizeof err))
        fail_msg("%s", err);
    int W = SRC - 2, nwin = (int)(file_ids.n / (size_t)W);
    assert_int_equal(nb_spans_heldout_windows(sp), nwin / HOLD);
    assert_int_equal(nb_spans_dec_len(sp), 4);
    assert_true(nb_spans_vocab(sp) == 30522);
    printf("  %zu tokens, %d windows of %d, %d held out, %llu training tokens\n", file_ids.n, nwin, W,
           nb_spans_heldout_windows(sp), (unsigned long long)nb_spans_train_tokens(sp));
    int32_t mask = 103, cls = 101; /* BERT's [MASK] and [CLS] */
    nb_spans_batch_t b, b2;
    assert_int_equal(nb_spans_batch_alloc(sp, 16, &b), 0);
    assert_int_equal(nb_spans_batch_alloc(sp, 16, &b2), 0);
    int lens[4] = { 0 };
    for (int step = 0; step < 20; step++) {
        nb_spans_train(sp, 7, (uint64_t)step, 0, &b);
        for (int r = 0; r < b.B; r++) {
            lens[b.span_len[r]]++;
            /* inside a run of training windows: no held-out window overlaps it */
            if (window_of(sp, &b, r, mask, cls, false) < 0)
                fail_msg("step %d row %d: not a window of the training text", step, r);
        }
    }
    assert_true(lens[1] > 0 && lens[2] > 0 && lens[3] > 0 && lens[0] == 0);
    /* the same key, the same pairs; another key, others */
    nb_spans_train(sp, 7, 3, 1, &b);
    nb_spans_train(sp, 7, 3, 1, &b2);
    assert_memory_equal(b.src, b2.src, sizeof(int32_t) * 16 * SRC);
    assert_memory_equal(b.dec_tgt, b2.dec_tgt, sizeof(int32_t) * 16 * 4);
    nb_spans_train(sp, 8, 3, 1, &b2);
    assert_memory_not_equal(b.src, b2.src, sizeof(int32_t) * 16 * SRC);
    /* held-out pairs: exactly the held-out windows, spread over all of them */
    int H = nb_spans_heldout_windows(sp);
    nb_spans_heldout(sp, 7, 0, H, &b);
    for (int r = 0; r < b.B && r < H; r++) {
        if (window_of(sp, &b, r, mask, cls, true) < 0)
            fail_msg("held-out row %d: not a held-out window", r);
    }
    nb_spans_heldout(sp, 7, 0, H, &b2);
    assert_memory_equal(b.src, b2.src, sizeof(int32_t) * 16 * SRC);
    nb_spans_batch_free(&b);
    nb_spans_batch_free(&b2);
    nb_spans_free(sp);
}

static void test_score(void **state)
{
    (void)state;
    double em, f1;
    int32_t ref[] = { 5, 6, 7 }, same[] = { 5, 6, 7 }, perm[] = { 7, 6, 5 }, part[] = { 5, 9 }, none[] = { 1 };
    nb_spans_score(same, 3, ref, 3, &em, &f1);
    assert_true(em == 1.0 && f1 == 1.0);
    nb_spans_score(perm, 3, ref, 3, &em, &f1);
    assert_true(em == 0.0 && f1 == 1.0);
    nb_spans_score(part, 2, ref, 3, &em, &f1); /* p 1/2, r 1/3 */
    assert_true(em == 0.0 && fabs(f1 - 0.4) < 1e-12);
    nb_spans_score(none, 1, ref, 3, &em, &f1);
    assert_true(em == 0.0 && f1 == 0.0);
    nb_spans_score(none, 0, ref, 3, &em, &f1);
    assert_true(em == 0.0 && f1 == 0.0);
}

static void test_refusals(void **state)
{
    (void)state;
    nb_spans_t *sp;
    char err[512];
    nb_spans_config_t c = base();
    c.tokenizer = "tests/data/tokenizers/bpe";
    assert_int_equal(nb_spans_open(&c, &sp, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "is not a WordPiece (BERT) vocabulary"));
    c = base();
    static const char *const missing[] = { "tests/data/tokenizers/no-such-file" };
    c.texts = missing;
    assert_int_equal(nb_spans_open(&c, &sp, err, sizeof err), NB_EIO);
    assert_non_null(strstr(err, "no-such-file: cannot read"));
    c = base();
    c.src_len = 1000; /* windows longer than the text */
    assert_int_equal(nb_spans_open(&c, &sp, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "give no held-out window"));
    printf("  %s\n", err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pairs),
        cmocka_unit_test(test_score),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
