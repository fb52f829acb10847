/*
 * test_net_frame.c - the frame codec on its own: CRC32C vector, round trip,
 * and every malformed input refused with its code before any payload is
 * allocated (garbage, 2^32-1 header length, truncation, shape overflow,
 * decompression bomb, wrong sizes, bad CRC, unknown message type).
 */
#include "tests/net/net_harness.h"
#include "daemon/net/crc32c.h"

static nb_frame_limits_t lim;

static uint8_t *tensor_frame(uint64_t *shape, size_t ndim, int dtype, const char *codec,
                             uint64_t decoded, const uint8_t *payload, size_t plen, size_t *len)
{
    Nebula__Frame f = NEBULA__FRAME__INIT;
    Nebula__Tensor t = NEBULA__TENSOR__INIT;
    t.job_id = 1;
    t.kind = NEBULA__TENSOR_KIND__KIND_GRADIENT;
    t.dtype = dtype;
    t.shape = shape;
    t.n_shape = ndim;
    t.codec = (char *)codec;
    t.decoded_bytes = decoded;
    f.body_case = NEBULA__FRAME__BODY_TENSOR;
    f.tensor = &t;
    uint8_t *hdr;
    size_t hlen;
    nb_frame_limits_t big = lim;
    big.max_payload = UINT64_MAX;
    assert_int_equal(nb_frame_encode(&f, payload, plen, &big, &hdr, &hlen), 0);
    uint8_t *b = malloc(hlen + plen);
    memcpy(b, hdr, hlen);
    if (plen)
        memcpy(b + hlen, payload, plen);
    free(hdr);
    *len = hlen + plen;
    return b;
}

static void expect_refused(const uint8_t *b, size_t len, int code, const char *why_part)
{
    Nebula__Frame *f = NULL;
    uint8_t *p = NULL;
    size_t plen;
    const char *why;
    long r = nb_frame_decode(b, len, &lim, &f, &p, &plen, &why);
    if (r != code)
        fail_msg("expected %d got %ld (%s)", code, r, why);
    assert_null(f);
    assert_null(p);
    if (why_part && !strstr(why, why_part))
        fail_msg("reason '%s' lacks '%s'", why, why_part);
}

static void test_crc32c(void **state)
{
    assert_int_equal(nb_crc32c(0, "123456789", 9), 0xE3069283u);
    uint8_t buf[1000];
    h_fill(buf, sizeof buf, 5);
    uint32_t whole = nb_crc32c(0, buf, sizeof buf);
    assert_int_equal(nb_crc32c(nb_crc32c(0, buf, 333), buf + 333, 667), whole);
    /* the three-stream path for large buffers against bytewise chaining */
    size_t big = 100003;
    uint8_t *b = malloc(big);
    h_fill(b, big, 6);
    uint32_t slow = 0;
    for (size_t i = 0; i < big; i += 1000)
        slow = nb_crc32c(slow, b + i, big - i < 1000 ? big - i : 1000);
    assert_int_equal(nb_crc32c(0, b, big), slow);
    assert_int_equal(nb_crc32c(nb_crc32c(0, b, 7), b + 7, big - 7), slow);
    free(b);
}

static void test_round_trip(void **state)
{
    uint64_t shape[3] = { 2, 3, 5 };
    uint8_t pay[120];
    h_fill(pay, sizeof pay, 1);
    size_t len;
    uint8_t *b = tensor_frame(shape, 3, NEBULA__DTYPE__DTYPE_F32, "raw", 120, pay, 120, &len);
    Nebula__Frame *f;
    uint8_t *p;
    size_t plen;
    const char *why;
    assert_int_equal(nb_frame_decode(b, len - 1, &lim, &f, &p, &plen, &why), 0); /* truncated */
    assert_int_equal(nb_frame_decode(b, len, &lim, &f, &p, &plen, &why), (long)len);
    assert_int_equal(plen, 120);
    assert_memory_equal(p, pay, 120);
    assert_int_equal(f->tensor->n_shape, 3);
    assert_int_equal(f->tensor->shape[2], 5);
    assert_string_equal(f->tensor->codec, "raw");
    nebula__frame__free_unpacked(f, NULL);
    free(p);
    /* byte layout: magic, version, flags, big-endian header length */
    assert_int_equal(b[0], 'N');
    assert_int_equal(b[1], 'B');
    assert_int_equal(b[2], 1);
    assert_int_equal(b[3], 0);
    uint32_t hlen = (uint32_t)b[4] << 24 | b[5] << 16 | b[6] << 8 | b[7];
    assert_int_equal(8 + hlen + 120, len);
    free(b);
}

static void test_garbage(void **state)
{
    uint8_t g[4096];
    h_fill(g, sizeof g, 9);
    g[0] = 'X';
    expect_refused(g, sizeof g, NB_EFORMAT, "magic");
    uint8_t v[8] = { 'N', 'B', 2, 0, 0, 0, 0, 4 };
    expect_refused(v, sizeof v, NB_EVERSION, "wire version");
    uint8_t fl[8] = { 'N', 'B', 1, 0x80, 0, 0, 0, 4 };
    expect_refused(fl, sizeof fl, NB_EFORMAT, "flags");
    /* a header that is not protobuf */
    uint8_t np[16] = { 'N', 'B', 1, 0, 0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    expect_refused(np, sizeof np, NB_EFORMAT, "protobuf");
}

static void test_huge_length_prefix(void **state)
{
    uint8_t b[8] = { 'N', 'B', 1, 0, 0xff, 0xff, 0xff, 0xff };
    /* The incremental decoder refuses at the prefix, before allocating. */
    nb_frame_rx_t rx;
    nb_frame_rx_init(&rx, &lim);
    uint8_t *dst;
    size_t want;
    nb_frame_rx_want(&rx, &dst, &want);
    assert_int_equal(want, 8);
    memcpy(dst, b, 8);
    assert_int_equal(nb_frame_rx_advance(&rx, 8), NB_ELIMIT);
    assert_null(rx.hbuf);
    assert_null(rx.payload);
    nb_frame_rx_free(&rx);
    expect_refused(b, sizeof b, NB_ELIMIT, "header length");
}

static void test_shape_overflow(void **state)
{
    uint64_t shape[3] = { 1ull << 32, 1ull << 32, 16 };
    size_t len;
    uint8_t *b = tensor_frame(shape, 3, NEBULA__DTYPE__DTYPE_F32, "raw", 0, NULL, 0, &len);
    expect_refused(b, len, NB_ERANGE, "overflow");
    free(b);
    /* product fits but times the element size does not */
    uint64_t shape2[2] = { 1ull << 32, 1ull << 31 };
    b = tensor_frame(shape2, 2, NEBULA__DTYPE__DTYPE_I64, "raw", 0, NULL, 0, &len);
    expect_refused(b, len, NB_ERANGE, "overflow");
    free(b);
}

static void test_size_checks(void **state)
{
    size_t len;
    uint8_t pay[64] = { 0 };
    /* decompression bomb: a small payload declaring 64 GiB decoded */
    uint64_t bomb[2] = { 1u << 20, 1u << 14 };
    uint8_t *b = tensor_frame(bomb, 2, NEBULA__DTYPE__DTYPE_F32, "int8", 4ull << 34, pay, 64, &len);
    expect_refused(b, len, NB_ELIMIT, "decoded size");
    free(b);
    /* decoded size that does not match the shape */
    uint64_t s[1] = { 16 };
    b = tensor_frame(s, 1, NEBULA__DTYPE__DTYPE_F32, "fp16", 32, pay, 32, &len);
    expect_refused(b, len, NB_ERANGE, "declared decoded size");
    free(b);
    /* raw payload that does not match the shape */
    b = tensor_frame(s, 1, NEBULA__DTYPE__DTYPE_F32, "raw", 64, pay, 60, &len);
    expect_refused(b, len, NB_ERANGE, "raw tensor payload");
    free(b);
    /* unknown dtype */
    b = tensor_frame(s, 1, 99, "raw", 64, pay, 64, &len);
    expect_refused(b, len, NB_EFORMAT, "dtype");
    free(b);
    /* payload larger than the limit: refused at the header */
    nb_frame_limits_t save = lim;
    lim.max_payload = 32;
    b = tensor_frame(s, 1, NEBULA__DTYPE__DTYPE_F32, "raw", 64, pay, 64, &len);
    expect_refused(b, len, NB_ELIMIT, "payload over");
    free(b);
    lim = save;
}

static void test_bad_crc(void **state)
{
    uint64_t s[1] = { 16 };
    uint8_t pay[64];
    h_fill(pay, 64, 3);
    size_t len;
    uint8_t *b = tensor_frame(s, 1, NEBULA__DTYPE__DTYPE_F32, "raw", 64, pay, 64, &len);
    b[len - 1] ^= 1;
    expect_refused(b, len, NB_ECRC, "CRC32C");
    free(b);
}

static void test_unknown_type_and_codec_meta(void **state)
{
    /* an empty Frame (no body) is an unknown message type */
    uint8_t e[10] = { 'N', 'B', 1, 0, 0, 0, 0, 2, 0x08, 0x00 };
    expect_refused(e, sizeof e, NB_EFORMAT, "unknown message type");
    /* a body field number this version does not know */
    uint8_t u[13] = { 'N', 'B', 1, 0, 0, 0, 0, 5, 0x9a, 0x06, 2, 0x08, 0x01 }; /* field 99, bytes */
    expect_refused(u, sizeof u, NB_EFORMAT, "unknown message type");
    /* codec metadata over 4 KiB */
    Nebula__Frame f = NEBULA__FRAME__INIT;
    Nebula__Tensor t = NEBULA__TENSOR__INIT;
    uint64_t s[1] = { 1 };
    uint8_t meta[5000] = { 0 };
    t.kind = NEBULA__TENSOR_KIND__KIND_ACTIVATION;
    t.dtype = NEBULA__DTYPE__DTYPE_U8;
    t.shape = s;
    t.n_shape = 1;
    t.codec = "raw";
    t.decoded_bytes = 1;
    t.codec_meta.data = meta;
    t.codec_meta.len = sizeof meta;
    f.body_case = NEBULA__FRAME__BODY_TENSOR;
    f.tensor = &t;
    uint8_t *hdr;
    size_t hlen;
    uint8_t one = 7;
    assert_int_equal(nb_frame_encode(&f, &one, 1, &lim, &hdr, &hlen), 0);
    uint8_t *b = malloc(hlen + 1);
    memcpy(b, hdr, hlen);
    b[hlen] = one;
    expect_refused(b, hlen + 1, NB_ELIMIT, "codec metadata");
    free(b);
    free(hdr);
    /* a payload on a message type that carries none */
    Nebula__Frame g = NEBULA__FRAME__INIT;
    Nebula__Shutdown sd = NEBULA__SHUTDOWN__INIT;
    g.body_case = NEBULA__FRAME__BODY_SHUTDOWN;
    g.shutdown = &sd;
    assert_int_equal(nb_frame_encode(&g, &one, 1, &lim, &hdr, &hlen), 0);
    b = malloc(hlen + 1);
    memcpy(b, hdr, hlen);
    b[hlen] = one;
    expect_refused(b, hlen + 1, NB_EFORMAT, "carries none");
    free(b);
    free(hdr);
}

/* The payload buffer is allocated only after the header is validated, and
 * the decoder's want pointer goes straight into it. */
static void test_incremental_payload_in_place(void **state)
{
    uint64_t s[2] = { 100, 100 };
    size_t plen = 100 * 100 * 4;
    uint8_t *pay = malloc(plen);
    h_fill(pay, plen, 11);
    size_t len;
    uint8_t *b = tensor_frame(s, 2, NEBULA__DTYPE__DTYPE_F32, "raw", plen, pay, plen, &len);
    nb_frame_rx_t rx;
    nb_frame_rx_init(&rx, &lim);
    size_t off = 0;
    int rc = 0, saw_payload_dst = 0;
    while (off < len) {
        uint8_t *dst;
        size_t want;
        nb_frame_rx_want(&rx, &dst, &want);
        if (rx.payload && dst >= rx.payload && dst < rx.payload + plen)
            saw_payload_dst = 1;
        size_t n = want < 777 ? want : 777; /* odd chunks */
        if (n > len - off)
            n = len - off;
        memcpy(dst, b + off, n);
        off += n;
        rc = nb_frame_rx_advance(&rx, n);
        assert_true(rc >= 0);
    }
    assert_int_equal(rc, 1);
    assert_true(saw_payload_dst);
    Nebula__Frame *f;
    uint8_t *p;
    size_t got;
    nb_frame_rx_take(&rx, &f, &p, &got);
    assert_int_equal(got, plen);
    assert_memory_equal(p, pay, plen);
    nebula__frame__free_unpacked(f, NULL);
    free(p);
    nb_frame_rx_free(&rx);
    free(b);
    free(pay);
}

/* ---- the fuzz seed corpus: real frames of every message type ----
 * NB_WRITE_FRAME_CORPUS=DIR rewrites the seeds; the test always checks that
 * every committed seed in tests/fuzz/corpus/frame decodes. */
static void write_seed(const char *dir, const char *name, Nebula__Frame *f,
                       const uint8_t *pay, size_t plen)
{
    uint8_t *hdr;
    size_t hlen;
    assert_int_equal(nb_frame_encode(f, pay, plen, &lim, &hdr, &hlen), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    fwrite(hdr, 1, hlen, fp);
    if (plen)
        fwrite(pay, 1, plen, fp);
    fclose(fp);
    free(hdr);
}

static void write_corpus(const char *dir)
{
    uint8_t pay[256];
    h_fill(pay, sizeof pay, 1);
    Nebula__Frame f = NEBULA__FRAME__INIT;
    Nebula__Hello h = NEBULA__HELLO__INIT;
    char *caps[] = { "probe:bulk", "codec:raw" };
    h.protocol_version = 1;
    h.daemon_name = "stage-1";
    h.role = NEBULA__ROLE__ROLE_STAGE;
    h.capabilities = caps;
    h.n_capabilities = 2;
    f.body_case = NEBULA__FRAME__BODY_HELLO;
    f.hello = &h;
    write_seed(dir, "hello", &f, NULL, 0);
    Nebula__Tensor t = NEBULA__TENSOR__INIT;
    uint64_t shape[3] = { 2, 4, 8 };
    t.job_id = 1;
    t.step = 10;
    t.micro_batch = 3;
    t.kind = NEBULA__TENSOR_KIND__KIND_ACTIVATION;
    t.dtype = NEBULA__DTYPE__DTYPE_F32;
    t.shape = shape;
    t.n_shape = 3;
    t.codec = "raw";
    t.decoded_bytes = 256;
    f.body_case = NEBULA__FRAME__BODY_TENSOR;
    f.tensor = &t;
    write_seed(dir, "tensor-raw", &f, pay, 256);
    uint8_t meta[16] = { 1, 2, 3, 4 };
    t.kind = NEBULA__TENSOR_KIND__KIND_GRADIENT;
    t.codec = "int8";
    t.codec_meta.data = meta;
    t.codec_meta.len = sizeof meta;
    write_seed(dir, "tensor-int8", &f, pay, 64 + 16);
    Nebula__Plan pl = NEBULA__PLAN__INIT;
    Nebula__LayerRange lr0 = NEBULA__LAYER_RANGE__INIT, lr1 = NEBULA__LAYER_RANGE__INIT;
    Nebula__LayerRange *lrs[2] = { &lr0, &lr1 };
    lr0.end_layer = 6;
    lr1.stage = 1;
    lr1.first_layer = 6;
    lr1.end_layer = 12;
    pl.job_id = 1;
    pl.step = 10;
    pl.micro_batches = 8;
    pl.schedule = "1f1b";
    pl.forward_codec = "fp16(svd(0.6))";
    pl.backward_codec = "int8";
    pl.stages = lrs;
    pl.n_stages = 2;
    f.body_case = NEBULA__FRAME__BODY_PLAN;
    f.plan = &pl;
    write_seed(dir, "plan", &f, NULL, 0);
    Nebula__Report rp = NEBULA__REPORT__INIT;
    Nebula__MicroBatchTiming mt = NEBULA__MICRO_BATCH_TIMING__INIT;
    Nebula__MicroBatchTiming *mts[1] = { &mt };
    mt.forward_ns = 1000;
    mt.backward_ns = 2000;
    rp.job_id = 1;
    rp.step = 10;
    rp.timings = mts;
    rp.n_timings = 1;
    rp.loss = 2.5;
    rp.grad_sumsq = 0.25;
    f.body_case = NEBULA__FRAME__BODY_REPORT;
    f.report = &rp;
    write_seed(dir, "report", &f, NULL, 0);
    Nebula__Probe pr = NEBULA__PROBE__INIT;
    pr.kind = NEBULA__PROBE__KIND__PROBE_PING;
    pr.id = 5;
    pr.t_ns = 123456789;
    f.body_case = NEBULA__FRAME__BODY_PROBE;
    f.probe = &pr;
    write_seed(dir, "probe-ping", &f, NULL, 0);
    pr.kind = NEBULA__PROBE__KIND__PROBE_BULK;
    pr.total_bytes = 512;
    write_seed(dir, "probe-bulk", &f, pay, 256);
    Nebula__Checkpoint ck = NEBULA__CHECKPOINT__INIT;
    ck.action = NEBULA__CHECKPOINT__ACTION__CHECKPOINT_SAVE;
    ck.step = 10;
    ck.tag = "step-10";
    f.body_case = NEBULA__FRAME__BODY_CHECKPOINT;
    f.checkpoint = &ck;
    write_seed(dir, "checkpoint", &f, NULL, 0);
    Nebula__Error er = NEBULA__ERROR__INIT;
    er.code = NB_ECRC;
    er.message = "checksum mismatch";
    f.body_case = NEBULA__FRAME__BODY_ERROR;
    f.error = &er;
    write_seed(dir, "error", &f, NULL, 0);
    Nebula__Shutdown sd = NEBULA__SHUTDOWN__INIT;
    sd.reason = "operator";
    f.body_case = NEBULA__FRAME__BODY_SHUTDOWN;
    f.shutdown = &sd;
    write_seed(dir, "shutdown", &f, NULL, 0);
    Nebula__Heartbeat hb = NEBULA__HEARTBEAT__INIT;
    hb.t_ns = 1;
    f.body_case = NEBULA__FRAME__BODY_HEARTBEAT;
    f.heartbeat = &hb;
    write_seed(dir, "heartbeat", &f, NULL, 0);
}

static void test_fuzz_corpus_decodes(void **state)
{
    const char *w = getenv("NB_WRITE_FRAME_CORPUS");
    if (w)
        write_corpus(w);
    static const char *const seeds[] = { "hello", "tensor-raw", "tensor-int8", "plan", "report",
                                         "probe-ping", "probe-bulk", "checkpoint", "error",
                                         "shutdown", "heartbeat" };
    const char *src = getenv("NB_SRCDIR") ? getenv("NB_SRCDIR") : ".";
    for (size_t i = 0; i < NB_ARRAY_LEN(seeds); i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/tests/fuzz/corpus/frame/%s", src, seeds[i]);
        FILE *fp = fopen(path, "rb");
        if (!fp)
            fail_msg("missing seed %s", path);
        static uint8_t buf[4096];
        size_t n = fread(buf, 1, sizeof buf, fp);
        fclose(fp);
        Nebula__Frame *f;
        uint8_t *p;
        size_t plen;
        const char *why;
        long r = nb_frame_decode(buf, n, &lim, &f, &p, &plen, &why);
        if (r != (long)n)
            fail_msg("seed %s: %ld (%s)", seeds[i], r, why);
        nebula__frame__free_unpacked(f, NULL);
        free(p);
    }
}

static int setup(void **state)
{
    nb_frame_limits_default(&lim);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_huge_length_prefix),
        cmocka_unit_test(test_shape_overflow),
        cmocka_unit_test(test_size_checks),
        cmocka_unit_test(test_bad_crc),
        cmocka_unit_test(test_unknown_type_and_codec_meta),
        cmocka_unit_test(test_incremental_payload_in_place),
        cmocka_unit_test(test_fuzz_corpus_decodes),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
