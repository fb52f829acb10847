/*
 * test_stage_host.c - the stage host refuses what a neighbour must not send
 * (wrong step, wrong micro-batch, wrong shape, labels outside the
 * vocabulary, a truncated payload, silence), with a message naming it, and
 * layouts that cannot work are refused before anything is built.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "kernels/codec/codec.h"
#include "tests/pipeline/pipe_fixture.h"

static char data_path[256];

static int setup(void **state)
{
    (void)state;
    snprintf(data_path, sizeof data_path, "/tmp/nb-stage-host-%d.tok", (int)getpid());
    return pf_write_tokens(data_path) ? -1 : 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(data_path);
    return 0;
}

static void test_layout_refusals(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    int place[2] = { 0, 1 };
    nb_pipe_layout_t l;
    pf_layout(&j, 2, place, 2, &l);
    assert_null(nb_pipe_layout_validate(&l));
    nb_pipe_layout_t bad = l;
    bad.parts[1].first = 3; /* gap: block 2 is nowhere */
    assert_non_null(strstr(nb_pipe_layout_validate(&bad), "contiguous"));
    bad = l;
    bad.parts[0].head = true;
    assert_non_null(strstr(nb_pipe_layout_validate(&bad), "head"));
    bad = l;
    bad.parts[1].last = 3;
    assert_non_null(strstr(nb_pipe_layout_validate(&bad), "cover"));
    bad = l;
    bad.placement[1] = 2;
    assert_non_null(strstr(nb_pipe_layout_validate(&bad), "placement"));
    bad = l;
    bad.seq_len = j.model.max_seq + 1;
    assert_non_null(nb_pipe_layout_validate(&bad));
    /* stage 0 without a token file */
    nb_backend_t *be = nb_cpu_backend_new();
    nb_host_t *h = NULL;
    char err[256];
    assert_int_equal(nb_host_new(be, &l, 0, NULL, &h, err, sizeof err), NB_EINVAL);
    assert_null(h);
    assert_non_null(strstr(err, "token file"));
    nb_be_free(be);
}

/* A neighbour that replays a fixed list of messages. */
typedef struct {
    nb_pmsg_t *msgs[8];
    int n, next;
    int sent;
} fake_io_t;

static int fake_send(void *ud, nb_pmsg_t *m)
{
    fake_io_t *f = ud;
    f->sent++;
    nb_pmsg_free(m);
    return 0;
}

static int fake_recv(void *ud, int stage, nb_pmsg_kind_t kind, nb_pmsg_t **out, int timeout_ms)
{
    (void)stage;
    (void)kind;
    (void)timeout_ms;
    fake_io_t *f = ud;
    if (f->next >= f->n)
        return NB_ETIMEDOUT;
    *out = f->msgs[f->next];
    f->msgs[f->next++] = NULL;
    return 0;
}

/* An fp32-encoded activation or gradient of the right size for the job. */
static nb_pmsg_t *tensor_msg(nb_backend_t *be, const pf_job_t *j, nb_pmsg_kind_t kind, int64_t step, int mb,
                             int64_t rows)
{
    int64_t shape[2] = { rows, j->model.d_model };
    nb_tensor_t *x = nb_tensor_zeros(be, NB_F32, 2, shape);
    nb_codec_spec_t spec;
    nb_codec_msg_t enc;
    nb_codec_msg_init(&enc);
    assert_int_equal(nb_codec_spec_parse("fp32", &spec, NULL, 0), 0);
    assert_int_equal(nb_codec_encode(be, &spec, x, 1, NULL, 0, &enc, NULL, 0), 0);
    nb_pmsg_t *m = nb_pmsg_new();
    m->kind = kind;
    m->from_stage = kind == NB_PMSG_GRAD ? 1 : 0;
    m->to_stage = kind == NB_PMSG_GRAD ? 0 : 1;
    m->step = step;
    m->mb = mb;
    m->rows = rows;
    m->cols = j->model.d_model;
    snprintf(m->spec, sizeof m->spec, "%s", enc.spec);
    memcpy(m->meta, enc.meta, enc.meta_len);
    m->meta_len = enc.meta_len;
    m->payload = enc.payload;
    m->payload_len = enc.payload_len;
    enc.payload = NULL;
    nb_codec_msg_free(&enc);
    nb_tensor_free(x);
    return m;
}

static nb_pmsg_t *labels_msg(const pf_job_t *j, int64_t step, int mb, int32_t value)
{
    nb_pmsg_t *m = nb_pmsg_new();
    size_t n = (size_t)j->B * (size_t)j->T;
    m->kind = NB_PMSG_LABELS;
    m->from_stage = 0;
    m->to_stage = 1;
    m->step = step;
    m->mb = mb;
    m->rows = j->B;
    m->cols = j->T;
    snprintf(m->spec, sizeof m->spec, "%s", NB_PMSG_LABELS_CODEC);
    m->payload = malloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++)
        ((int32_t *)m->payload)[i] = value;
    m->payload_len = n * sizeof(int32_t);
    return m;
}

/* Runs one step of the head stage (daemon 1 of a 2-stage chain) against the
 * fake neighbour; returns the host's code and its message. */
static int run_head_step(fake_io_t *f, char *err, size_t errlen)
{
    pf_job_t j = pf_job_default(data_path);
    int place[2] = { 0, 1 };
    nb_pipe_layout_t l;
    pf_layout(&j, 2, place, 2, &l);
    nb_backend_t *be = nb_cpu_backend_new();
    nb_host_t *h = NULL;
    assert_int_equal(nb_host_new(be, &l, 1, NULL, &h, err, errlen), 0);
    nb_step_plan_t plan = { .step = 5, .m = 1 };
    nb_sched_parse("gpipe", &plan.sched);
    snprintf(plan.fwd_codec, sizeof plan.fwd_codec, "fp32");
    snprintf(plan.bwd_codec, sizeof plan.bwd_codec, "fp32");
    nb_pipe_io_i io = { fake_send, fake_recv, f };
    nb_step_result_t res;
    int rc = nb_host_run_step(h, &plan, &io, 100, &res, err, errlen);
    for (int i = 0; i < f->n; i++)
        nb_pmsg_free(f->msgs[i]);
    nb_host_free(h);
    nb_be_free(be);
    return rc;
}

static void test_good_step_then_refusals(void **state)
{
    (void)state;
    pf_job_t j = pf_job_default(data_path);
    nb_backend_t *be = nb_cpu_backend_new();
    int64_t rows = (int64_t)j.B * j.T;
    char err[512];

    /* the well-formed step: activation + labels in, one gradient out */
    fake_io_t ok = { .n = 2 };
    ok.msgs[0] = tensor_msg(be, &j, NB_PMSG_ACT, 5, 0, rows);
    ok.msgs[1] = labels_msg(&j, 5, 0, 'a');
    assert_int_equal(run_head_step(&ok, err, sizeof err), 0);
    assert_int_equal(ok.sent, 1);

    fake_io_t wrong_mb = { .n = 1 };
    wrong_mb.msgs[0] = tensor_msg(be, &j, NB_PMSG_ACT, 5, 1, rows);
    assert_int_equal(run_head_step(&wrong_mb, err, sizeof err), NB_ESTATE);
    assert_non_null(strstr(err, "micro-batch 1"));

    fake_io_t wrong_step = { .n = 1 };
    wrong_step.msgs[0] = tensor_msg(be, &j, NB_PMSG_ACT, 4, 0, rows);
    assert_int_equal(run_head_step(&wrong_step, err, sizeof err), NB_ESTATE);
    assert_non_null(strstr(err, "step 4"));

    fake_io_t wrong_shape = { .n = 1 };
    wrong_shape.msgs[0] = tensor_msg(be, &j, NB_PMSG_ACT, 5, 0, rows / 2);
    assert_int_equal(run_head_step(&wrong_shape, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, "shape"));

    fake_io_t bad_labels = { .n = 2 };
    bad_labels.msgs[0] = tensor_msg(be, &j, NB_PMSG_ACT, 5, 0, rows);
    bad_labels.msgs[1] = labels_msg(&j, 5, 0, 9999);
    assert_int_equal(run_head_step(&bad_labels, err, sizeof err), NB_ERANGE);
    assert_non_null(strstr(err, "vocabulary"));

    fake_io_t truncated = { .n = 1 };
    truncated.msgs[0] = tensor_msg(be, &j, NB_PMSG_ACT, 5, 0, rows);
    truncated.msgs[0]->payload_len -= 4;
    assert_true(run_head_step(&truncated, err, sizeof err) < 0);

    fake_io_t silent = { .n = 0 };
    assert_int_equal(run_head_step(&silent, err, sizeof err), NB_ETIMEDOUT);
    assert_non_null(strstr(err, "no activation"));
    nb_be_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_refusals),
        cmocka_unit_test(test_good_step_then_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
