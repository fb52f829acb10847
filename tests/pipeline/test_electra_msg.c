/* test_electra_msg.c - the ELECTRA job across daemons, message level: the
 * ElectraJob survives the wire and gives the generator daemon exactly the
 * generator the reference builds; a received ElectraJob out of range or for
 * another daemon is refused; and the discriminator's daemon refuses a batch
 * with a token ID beyond its vocabulary, a sequence of the wrong length or
 * count, a batch from a peer that is not a generator, one that claims
 * another generator's index, one for the wrong step or beyond the credit,
 * a truncated one and a tensor that is not a batch, each with the sender
 * named, leaving the receiver's batch as it was. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/pipeline/electra_msg.h"
#include "kernels/common.h"

static nb_electra_config_t make_ec(void)
{
    nb_electra_config_t ec;
    memset(&ec, 0, sizeof ec);
    ec.model = (nb_model_config_t){ .n_layer = 2, .d_model = 32, .n_head = 4, .d_ff = 128, .vocab = 300,
                                    .max_seq = 16, .head = NB_MODEL_HEAD_TOKCLS, .n_classes = 2, .ln_eps = 1e-5f };
    ec.seq_len = 4;
    ec.steps = 10;
    ec.mask_prob = 0.15f;
    ec.n_gen = 2;
    for (int i = 0; i < 2; i++) {
        nb_electra_gen_config_t *g = &ec.gen[i];
        snprintf(g->name, sizeof g->name, "%s", i ? "apache" : "gpl");
        g->model = (nb_model_config_t){ .n_layer = 1, .d_model = 16, .n_head = 2, .d_ff = 64, .vocab = 257,
                                        .max_seq = 16, .head = NB_MODEL_HEAD_MLM, .ln_eps = 1e-5f,
                                        .gelu = NB_MODEL_GELU_ERF, .mask_token = 256,
                                        .token_shift = i == 1 }; /* travels (test_job_travels) */
        g->optim = nb_optim_config_default();
        g->optim.lr = 3e-3f;
        g->optim.total_steps = 10;
        g->seed = 40 + (uint64_t)i;
        g->sequences = 2 + i;
    }
    return ec;
}

static void test_job_travels(void **state)
{
    (void)state;
    nb_electra_config_t ec = make_ec();
    nb_electra_msg_store_t st;
    nb_electra_job_to_msg(&ec, 1, 77, 3, 5, &st);
    size_t n = nebula__electra_job__get_packed_size(&st.job);
    uint8_t *buf = malloc(n);
    assert_non_null(buf);
    nebula__electra_job__pack(&st.job, buf);
    Nebula__ElectraJob *m = nebula__electra_job__unpack(NULL, n, buf);
    assert_non_null(m);
    nb_electra_gen_config_t gc;
    nb_electra_job_info_t info;
    char err[512];
    assert_int_equal(nb_electra_job_from_msg(m, "apache", "own.tok", &gc, &info, err, sizeof err), 0);
    assert_memory_equal(&gc.model, &ec.gen[1].model, sizeof gc.model);
    assert_true(gc.model.token_shift);
    assert_memory_equal(&gc.optim, &ec.gen[1].optim, sizeof gc.optim);
    assert_int_equal(gc.seed, 41);
    assert_int_equal(gc.sequences, 3);
    assert_string_equal(gc.data, "own.tok"); /* the daemon's own text, never the coordinator's */
    assert_int_equal(info.index, 1);
    assert_int_equal(info.job_id, 77);
    assert_int_equal(info.resume_step, 3);
    assert_int_equal(info.credit, 5);
    assert_int_equal(info.disc_vocab, 300);
    assert_int_equal(info.seq_len, 4);
    assert_true(info.mask_prob == 0.15f);
    /* for another daemon, or out of range: refused */
    assert_int_equal(nb_electra_job_from_msg(m, "gpl", "own.tok", &gc, &info, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "apache"));
    m->resume_step = 11;
    assert_int_equal(nb_electra_job_from_msg(m, "apache", "own.tok", &gc, &info, err, sizeof err), NB_EFORMAT);
    assert_string_equal(err, "electra job: resume_step is 11, allowed 0..10");
    m->resume_step = 3;
    m->model->vocab = 1u << 30;
    assert_int_equal(nb_electra_job_from_msg(m, "apache", "own.tok", &gc, &info, err, sizeof err), NB_EFORMAT);
    assert_string_equal(err, "electra job: model.vocab is 1073741824, allowed 0..16777216");
    m->model->vocab = 300;
    m->sequences = 0;
    assert_int_equal(nb_electra_job_from_msg(m, "apache", "own.tok", &gc, &info, err, sizeof err), NB_EFORMAT);
    assert_string_equal(err, "electra job: sequences is 0, allowed 1..65536");
    /* every field within its range, the product not: refused before anything is allocated */
    m->sequences = 65536;
    m->model->vocab = 1u << 24;
    m->disc_vocab = 1u << 24;
    assert_int_equal(nb_electra_job_from_msg(m, "apache", "own.tok", &gc, &info, err, sizeof err), NB_ELIMIT);
    assert_non_null(strstr(err, "65536 sequences x 4 tokens x vocab 16777216"));
    assert_non_null(strstr(err, "GiB"));
    m->sequences = 3;
    m->model->vocab = 300;
    assert_int_equal(nb_electra_job_from_msg(m, "apache", "own.tok", &gc, &info, err, sizeof err), 0);
    /* the largest of everything saturates, never wraps below the cap */
    nb_model_config_t big = { .n_layer = 4096, .d_model = 65536, .n_head = 4096, .d_ff = 262144,
                              .vocab = 1 << 24, .max_seq = 65536 };
    assert_true(nb_electra_gen_bytes(&big, 65536, 65536, NULL, NULL, NULL) > NB_ELECTRA_GEN_MEM_MAX);
    nebula__electra_job__free_unpacked(m, NULL);
    free(buf);
}

/* A job parked while a step ran, applied after newer credit frames of the
 * same job, keeps the larger credit; a new job takes its own. */
static void test_credit_never_lowered(void **state)
{
    (void)state;
    nb_electra_job_info_t in = { .job_id = 9, .credit = 3 };
    assert_int_equal(nb_electra_credit_after_job(9, 7, &in), 7);
    assert_int_equal(nb_electra_credit_after_job(9, 2, &in), 3);
    assert_int_equal(nb_electra_credit_after_job(8, 7, &in), 3);
}

/* Two configs equal field by field are the same job whatever their padding
 * holds; any field that shapes the batches makes another. */
static void test_job_same(void **state)
{
    (void)state;
    nb_electra_config_t ec = make_ec();
    nb_electra_gen_config_t a, b;
    memset(&a, 0x00, sizeof a);
    memset(&b, 0xa5, sizeof b); /* other bytes in the padding */
    a = ec.gen[1];
    b.model = a.model;
    b.optim = a.optim;
    memcpy(b.name, a.name, sizeof b.name);
    memcpy(b.data, a.data, sizeof b.data);
    b.seed = a.seed;
    b.sequences = a.sequences;
    nb_electra_job_info_t ai = { .job_id = 1, .index = 1, .seq_len = 4, .steps = 10, .mask_prob = 0.15f,
                                 .disc_vocab = 300, .resume_step = 0, .credit = 2 };
    nb_electra_job_info_t bi = ai;
    bi.job_id = 2; /* a restarted discriminator: a new job id, the same batches */
    bi.resume_step = 3;
    bi.credit = 5;
    assert_true(nb_electra_job_same(&a, &ai, &b, &bi));
    b.seed++;
    assert_false(nb_electra_job_same(&a, &ai, &b, &bi));
    b.seed--;
    b.optim.lr *= 2;
    assert_false(nb_electra_job_same(&a, &ai, &b, &bi));
    b.optim.lr = a.optim.lr;
    b.model.token_shift = !a.model.token_shift; /* another model: another job */
    assert_false(nb_electra_job_same(&a, &ai, &b, &bi));
    b.model.token_shift = a.model.token_shift;
    assert_true(nb_electra_job_same(&a, &ai, &b, &bi));
    bi.mask_prob = 0.2f;
    assert_false(nb_electra_job_same(&a, &ai, &b, &bi));
}

/* job.model.token_shift of the discriminator and of each generator reach
 * their model configs (nb_electra_cfg_convert). */
static void test_cfg_token_shift(void **state)
{
    (void)state;
    static nb_config_t cfg;
    char err[512];
    if (nb_cfg_load("config/electra/single-process.yaml", &cfg, err, sizeof err))
        fail_msg("%s", err);
    cfg.job.model.token_shift = true;
    cfg.job.electra.generators[1].model.token_shift = true;
    static nb_electra_config_t ec;
    if (nb_electra_cfg_convert(&cfg, 10, &ec, err, sizeof err))
        fail_msg("%s", err);
    assert_true(ec.model.token_shift);
    assert_false(ec.gen[0].model.token_shift);
    assert_true(ec.gen[1].model.token_shift);
}

/* A peer's non-finite loss reads n/a in progress lines. */
static void test_loss_text(void **state)
{
    (void)state;
    char b[NB_ELECTRA_LOSS_TEXT];
    assert_string_equal(nb_electra_loss_text(2.5, b, sizeof b), "2.5000");
    assert_string_equal(nb_electra_loss_text(NAN, b, sizeof b), "n/a");
    assert_string_equal(nb_electra_loss_text(INFINITY, b, sizeof b), "n/a");
    assert_string_equal(nb_electra_loss_text(-INFINITY, b, sizeof b), "n/a");
}

/* A batch of generator gen for step, n x T tokens, ID k*7 % id_mod at k
 * (the last ID id_mod - 1 when id_mod > 200). */
static size_t make_wire(int gen, uint64_t step, int n, int T, int id_mod, uint32_t vocab, uint8_t *buf, size_t cap)
{
    int32_t ids[64];
    uint8_t rep[64];
    for (int k = 0; k < n * T; k++) {
        ids[k] = k == n * T - 1 && id_mod > 200 ? id_mod - 1 : (k * 7) % id_mod; /* the last: the largest ID */
        rep[k] = (uint8_t)(k % 3 == 0);
    }
    nb_electra_batch_t b = { .gen = gen, .step = step, .n = n, .T = T, .ids = ids, .replaced = rep };
    long len = nb_electra_wire_encode(&b, vocab, buf, cap);
    assert_true(len > 0);
    return (size_t)len;
}

static Nebula__Tensor tensor(uint64_t job, uint64_t step, uint32_t from, size_t len)
{
    Nebula__Tensor t;
    nebula__tensor__init(&t);
    t.job_id = job;
    t.step = step;
    t.kind = NEBULA__TENSOR_KIND__KIND_TOKEN_IDS;
    t.dtype = NEBULA__DTYPE__DTYPE_U8;
    t.codec = (char *)NB_ELECTRA_CODEC;
    t.decoded_bytes = len;
    t.from_stage = from;
    return t;
}

/* Refused with the sender named, and b untouched. */
static void expect_refused(const nb_electra_rx_t *x, const char *sender, const Nebula__Tensor *t, const uint8_t *p,
                           size_t len, const char *what)
{
    int32_t ids[8];
    uint8_t rep[8];
    for (int k = 0; k < 8; k++) {
        ids[k] = -5;
        rep[k] = 9;
    }
    nb_electra_batch_t b = { .ids = ids, .replaced = rep };
    char err[1024] = "";
    int rc = nb_electra_rx_accept(x, sender, t, p, len, &b, 8, err, sizeof err);
    assert_true(rc < 0);
    if (!strstr(err, sender) || !strstr(err, what))
        fail_msg("message '%s' lacks '%s' or '%s'", err, sender, what);
    for (int k = 0; k < 8; k++)
        assert_true(ids[k] == -5 && rep[k] == 9);
}

static void test_rx_refuses(void **state)
{
    (void)state;
    nb_electra_rx_t x;
    memset(&x, 0, sizeof x);
    x.job_id = 5;
    x.n_gen = 2;
    x.names[0] = "gpl";
    x.names[1] = "apache";
    x.seqs[0] = 2;
    x.seqs[1] = 1;
    x.seq_len = 4;
    x.vocab = 200;
    x.next[0] = 3;
    x.next[1] = 2;
    x.credit = 4;
    uint8_t buf[256];
    /* a good batch of gpl (2 x 4 tokens) for step 3 */
    size_t len = make_wire(0, 3, 2, 4, 200, 256, buf, sizeof buf);
    Nebula__Tensor t = tensor(5, 3, 0, len);
    int32_t ids[8];
    uint8_t rep[8];
    nb_electra_batch_t b = { .ids = ids, .replaced = rep };
    char err[1024];
    assert_int_equal(nb_electra_rx_accept(&x, "gpl", &t, buf, len, &b, 8, err, sizeof err), 0);
    assert_int_equal(ids[5], 35);
    assert_int_equal(rep[3], 1);
    /* a token ID beyond the discriminator's vocabulary (IDs up to 299) */
    len = make_wire(0, 3, 2, 4, 300, 300, buf, sizeof buf);
    t = tensor(5, 3, 0, len);
    expect_refused(&x, "gpl", &t, buf, len, "outside the discriminator's vocabulary");
    /* sequences of the wrong length (T 3), and the wrong count */
    len = make_wire(0, 3, 2, 3, 200, 256, buf, sizeof buf);
    t = tensor(5, 3, 0, len);
    expect_refused(&x, "gpl", &t, buf, len, "expected 2 sequences of 4");
    len = make_wire(0, 3, 1, 4, 200, 256, buf, sizeof buf);
    t = tensor(5, 3, 0, len);
    expect_refused(&x, "gpl", &t, buf, len, "expected 2 sequences of 4");
    /* a peer that is not a generator of the job */
    len = make_wire(0, 3, 2, 4, 200, 256, buf, sizeof buf);
    t = tensor(5, 3, 0, len);
    expect_refused(&x, "mallory", &t, buf, len, "not a generator");
    /* apache sending under gpl's index, in the frame or in the batch */
    t = tensor(5, 2, 0, len);
    expect_refused(&x, "apache", &t, buf, len, "generator 0");
    len = make_wire(0, 2, 1, 4, 200, 256, buf, sizeof buf);
    t = tensor(5, 2, 1, len);
    expect_refused(&x, "apache", &t, buf, len, "names generator 0");
    /* the wrong step, a step beyond the credit, another job */
    len = make_wire(0, 4, 2, 4, 200, 256, buf, sizeof buf);
    t = tensor(5, 4, 0, len);
    expect_refused(&x, "gpl", &t, buf, len, "step 3 expected");
    x.next[0] = 4;
    expect_refused(&x, "gpl", &t, buf, len, "beyond its credit");
    x.next[0] = 3;
    len = make_wire(0, 3, 2, 4, 200, 256, buf, sizeof buf);
    t = tensor(6, 3, 0, len);
    expect_refused(&x, "gpl", &t, buf, len, "job 6");
    /* truncated, and not a batch at all */
    t = tensor(5, 3, 0, len - 1);
    expect_refused(&x, "gpl", &t, buf, len - 1, "bytes");
    t = tensor(5, 3, 0, len);
    t.kind = NEBULA__TENSOR_KIND__KIND_ACTIVATION;
    expect_refused(&x, "gpl", &t, buf, len, "not an ELECTRA batch");
    t = tensor(5, 3, 0, len);
    t.codec = (char *)"raw";
    expect_refused(&x, "gpl", &t, buf, len, "not an ELECTRA batch");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_job_travels),
        cmocka_unit_test(test_credit_never_lowered),
        cmocka_unit_test(test_job_same),
        cmocka_unit_test(test_cfg_token_shift),
        cmocka_unit_test(test_loss_text),
        cmocka_unit_test(test_rx_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
