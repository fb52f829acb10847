/* test_safetensors.c - the safetensors reader refuses hand-made hostile
 * files (truncated at every length, lying or huge header length, offsets
 * past the end, overlapping or leaving gaps, duplicate names, a byte range
 * that does not fit dtype x shape, unknown dtypes, bad shapes, non-finite
 * values) with the file, the tensor and the reason; F16 and BF16 convert
 * exactly; written files read back bit for bit. The GPT-2 and BERT maps are
 * checked against layouts written here by hand (Conv1D transposed, q/k/v
 * concatenated, token type 0 folded into positions), config.json settings
 * the family lacks are named, and export -> import round-trips. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "daemon/train/hf_model.h"
#include "daemon/train/safetensors.h"

static char dir[256];

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "%s/nb_st_test_XXXXXX", P_tmpdir);
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A file in memory: 8-byte length, the header, data_len bytes of data. */
typedef struct {
    uint8_t *buf;
    size_t len;
} blob_t;

static blob_t make(const char *header, size_t data_len, const void *data)
{
    size_t hl = strlen(header);
    blob_t b = { calloc(1, 8 + hl + data_len + 1), 8 + hl + data_len };
    uint64_t h = hl;
    memcpy(b.buf, &h, 8);
    memcpy(b.buf + 8, header, hl);
    if (data)
        memcpy(b.buf + 8 + hl, data, data_len);
    return b;
}

/* Opens b in memory; expects a refusal whose message contains each of the
 * NULL-terminated strings. */
static void expect_refused(blob_t b, ...)
{
    nb_st_file_t *f = (nb_st_file_t *)1;
    char err[512] = "";
    int rc = nb_st_open_mem(b.buf, b.len, "bad.safetensors", &f, err, sizeof err);
    print_message("  refused: %s\n", err);
    assert_int_equal(rc, NB_EFORMAT);
    assert_null(f);
    assert_non_null(strstr(err, "bad.safetensors"));
    va_list ap;
    va_start(ap, b);
    for (const char *s; (s = va_arg(ap, const char *));)
        if (!strstr(err, s))
            fail_msg("'%s' not in: %s", s, err);
    va_end(ap);
    free(b.buf);
}

static void test_hostile_headers(void **state)
{
    /* lying length: more header than the file holds */
    blob_t b = make("{}", 0, NULL);
    uint64_t big = 1000;
    memcpy(b.buf, &big, 8);
    expect_refused(b, "header length 1000 reaches past the end", NULL);
    /* huge length */
    b = make("{}", 0, NULL);
    big = UINT64_MAX;
    memcpy(b.buf, &big, 8);
    expect_refused(b, "over the limit", NULL);
    b = make("{}", 0, NULL);
    big = NB_ST_MAX_HEADER + 1ull;
    memcpy(b.buf, &big, 8);
    expect_refused(b, "over the limit", NULL);
    /* too short for the length itself */
    b = make("", 0, NULL);
    b.len = 5;
    expect_refused(b, "too short", NULL);
    expect_refused(make("[1,2]", 0, NULL), "does not start with '{'", NULL);
    expect_refused(make("{\"a\":", 0, NULL), "header byte", NULL);
    /* offset past the end */
    expect_refused(make("{\"w\":{\"dtype\":\"F32\",\"shape\":[100],\"data_offsets\":[0,400]}}", 16, NULL),
                   "tensor 'w'", "reach past the end of the data (16 bytes)", NULL);
    /* overlapping */
    expect_refused(make("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, NULL),
                   "tensor 'b'", "overlap tensor 'a'", NULL);
    /* identical ranges also overlap */
    expect_refused(make("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, NULL),
                   "overlap", NULL);
    /* a gap, and data left over after the last tensor */
    expect_refused(make("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, NULL),
                   "tensor 'a'", "gap", NULL);
    expect_refused(make("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, NULL),
                   "cover 8 bytes", "holds 12", NULL);
    /* duplicate names */
    expect_refused(make("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                        "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, NULL),
                   "appears twice", NULL);
    /* dtype size x shape against the byte range */
    expect_refused(make("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, NULL),
                   "tensor 'w'", "3 elements of F32 need 12 bytes", NULL);
    expect_refused(make("{\"w\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16, NULL),
                   "4 elements of F16 need 8 bytes", NULL);
    expect_refused(make("{\"w\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, NULL),
                   "tensor 'w'", "unknown dtype \"Q4\"", NULL);
    expect_refused(make("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0, NULL),
                   "tensor 'w'", "non-negative integer", NULL);
    expect_refused(make("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, NULL),
                   "9 dimensions", NULL);
    expect_refused(make("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}}", 4,
                        NULL),
                   "overflows", NULL);
    expect_refused(make("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, NULL),
                   "end before they begin", NULL);
    expect_refused(make("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, NULL), "data_offsets", NULL);
    expect_refused(make("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4, NULL),
                   "keys other than", NULL);
    expect_refused(make("{\"w\":[]}", 0, NULL), "tensor 'w'", "not an object", NULL);
    expect_refused(make("{\"__metadata__\":{\"k\":3}}", 0, NULL), "__metadata__ 'k' is not a string", NULL);
    expect_refused(make("{\"__metadata__\":[]}", 0, NULL), "__metadata__ is not an object", NULL);
}

static void write_blob(const char *path, const uint8_t *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    fclose(f);
}

static void test_values_and_truncation(void **state)
{
    uint16_t f16[5] = { 0x3c00, 0xc000, 0x0001, 0x7bff, 0x8000 }; /* 1, -2, 2^-24, 65504, -0 */
    uint16_t bf16[2] = { 0x3f80, 0x4049 };                         /* 1, 3.140625 */
    int64_t i64 = 7;
    float f32[2] = { 0.5f, -1.25f };
    uint8_t data[10 + 4 + 8 + 8];
    memcpy(data, f16, 10);
    memcpy(data + 10, bf16, 4);
    memcpy(data + 14, &i64, 8);
    memcpy(data + 22, f32, 8);
    const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"},"
                      "\"h\":{\"dtype\":\"F16\",\"shape\":[5],\"data_offsets\":[0,10]},"
                      "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[10,14]},"
                      "\"i\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[14,22]},"
                      "\"f\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[22,30]}}";
    blob_t b = make(hdr, sizeof data, data);
    char path[300], err[512];
    snprintf(path, sizeof path, "%s/v.safetensors", dir);
    write_blob(path, b.buf, b.len);
    nb_st_file_t *f;
    assert_int_equal(nb_st_open(path, &f, err, sizeof err), 0);
    assert_int_equal(nb_st_count(f), 4);
    assert_string_equal(nb_st_metadata(f, "format"), "pt");
    float v[5];
    assert_int_equal(nb_st_read_f32(f, nb_st_find(f, "h"), v, err, sizeof err), 0);
    assert_true(v[0] == 1.0f && v[1] == -2.0f && v[2] == ldexpf(1, -24) && v[3] == 65504.0f && v[4] == 0.0f &&
                signbit(v[4]));
    assert_int_equal(nb_st_read_f32(f, nb_st_find(f, "b"), v, err, sizeof err), 0);
    assert_true(v[0] == 1.0f && v[1] == 3.140625f);
    assert_int_equal(nb_st_read_f32(f, nb_st_find(f, "f"), v, err, sizeof err), 0);
    assert_true(v[0] == 0.5f && v[1] == -1.25f);
    assert_int_equal(nb_st_tensor(f, nb_st_find(f, "i"))->ndim, 0);
    assert_int_equal(nb_st_read_f32(f, nb_st_find(f, "i"), v, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "tensor 'i': dtype I64 does not convert"));
    nb_st_close(f);
    /* every f16 bit pattern: finite ones match the compiler's conversion */
    for (uint32_t x = 0; x < 65536; x++) {
        _Float16 h;
        uint16_t u = (uint16_t)x;
        memcpy(&h, &u, 2);
        float want = (float)h, got = nb_st_f16_to_f32(u);
        if (isnan(want))
            assert_true(isnan(got));
        else
            assert_memory_equal(&want, &got, 4);
    }
    /* truncated at every length: refused, never a crash */
    for (size_t cut = 0; cut < b.len; cut++) {
        write_blob(path, b.buf, cut);
        f = (nb_st_file_t *)1;
        assert_int_equal(nb_st_open(path, &f, err, sizeof err), NB_EFORMAT);
        assert_null(f);
        assert_non_null(strstr(err, path));
    }
    /* a value that is not finite is refused with the element */
    f32[1] = NAN;
    memcpy(data + 22, f32, 8);
    free(b.buf);
    b = make(hdr, sizeof data, data);
    assert_int_equal(nb_st_open_mem(b.buf, b.len, "nan.safetensors", &f, err, sizeof err), 0);
    assert_int_equal(nb_st_read_f32(f, nb_st_find(f, "f"), v, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, "tensor 'f': element 1 is not finite"));
    nb_st_close(f);
    free(b.buf);
    /* a missing file */
    assert_int_equal(nb_st_open("/nonexistent/x.safetensors", &f, err, sizeof err), NB_EIO);
}

static void test_write_read(void **state)
{
    float a[6] = { 1, 2, 3, 4, 5, 6 }, c[1] = { -7 };
    nb_st_out_t t[3] = {
        { .name = "a", .ndim = 2, .shape = { 2, 3 }, .data = a },
        { .name = "scalar", .ndim = 0, .data = c },
        { .name = "empty", .ndim = 1, .shape = { 0 }, .data = a },
    };
    const char *meta[] = { "format", "pt", "k", "v" };
    char path[300], err[512];
    snprintf(path, sizeof path, "%s/w.safetensors", dir);
    assert_int_equal(nb_st_write(path, t, 3, meta, 2, err, sizeof err), 0);
    nb_st_file_t *f;
    assert_int_equal(nb_st_open(path, &f, err, sizeof err), 0);
    assert_int_equal(nb_st_count(f), 3);
    assert_string_equal(nb_st_metadata(f, "k"), "v");
    float got[6];
    assert_int_equal(nb_st_read_f32(f, nb_st_find(f, "a"), got, err, sizeof err), 0);
    assert_memory_equal(got, a, sizeof a);
    assert_int_equal(nb_st_read_f32(f, nb_st_find(f, "scalar"), got, err, sizeof err), 0);
    assert_true(got[0] == -7);
    nb_st_close(f);
    FILE *fp = fopen(path, "rb");
    uint64_t hl;
    assert_int_equal(fread(&hl, 8, 1, fp), 1);
    fclose(fp);
    assert_int_equal(hl % 8, 0); /* data 8-byte aligned */
    t[1].name = "a";
    assert_int_equal(nb_st_write(path, t, 2, meta, 2, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "duplicate name 'a'"));
}

/* ---- the name maps ------------------------------------------------------ */

#define L 2
#define C 4
#define NH 2
#define F 8
#define V 8
#define S 4

/* A value identifying (tensor, element): tensor id * 1000 + element. */
static float val(int id, int e) { return (float)(id * 1000 + e); }

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2];
    float *data;
} mk_t;

static mk_t mk[64];
static int nmk;

static int add(const char *name, int ndim, int64_t r, int64_t c)
{
    mk_t *m = &mk[nmk];
    snprintf(m->name, sizeof m->name, "%s", name);
    m->ndim = ndim;
    m->shape[0] = r;
    m->shape[1] = c;
    size_t n = (size_t)r * (size_t)(ndim > 1 ? c : 1);
    m->data = malloc(n * sizeof(float));
    for (size_t e = 0; e < n; e++)
        m->data[e] = val(nmk, (int)e);
    return nmk++;
}

static void write_mk(const char *path)
{
    nb_st_out_t t[64];
    for (int i = 0; i < nmk; i++)
        t[i] = (nb_st_out_t){ .name = mk[i].name, .ndim = mk[i].ndim, .shape = { mk[i].shape[0], mk[i].shape[1] },
                              .data = mk[i].data };
    char err[512];
    assert_int_equal(nb_st_write(path, t, nmk, NULL, 0, err, sizeof err), 0);
}

static void free_mk(void)
{
    for (int i = 0; i < nmk; i++)
        free(mk[i].data);
    nmk = 0;
}

static float *part_host(nb_part_t *p, const char *name)
{
    int i = nb_part_find_tensor(p, name);
    assert_true(i >= 0);
    const nb_param_info_t *t = nb_part_tensor(p, i);
    float *h = malloc(t->numel * sizeof(float));
    nb_be_to_host(nb_part_backend(p), h, nb_part_params(p) + t->offset, t->numel * sizeof(float));
    return h;
}

static int notes;
static void count_note(void *ud, const char *n)
{
    print_message("  note: %s\n", n);
    notes++;
}

static nb_model_config_t gpt_cfg(void)
{
    return (nb_model_config_t){ .n_layer = L, .d_model = C, .n_head = NH, .d_ff = F, .vocab = V, .max_seq = S,
                                .causal = true, .norm = NB_MODEL_NORM_PRE, .head = NB_MODEL_HEAD_LM,
                                .tie_embeddings = true };
}

static int load_file(const char *path, nb_hf_names_t names, nb_part_t *p, char *err, size_t errlen)
{
    nb_st_file_t *f;
    int rc = nb_st_open(path, &f, err, errlen);
    if (rc)
        return rc;
    rc = nb_hf_load(f, names, p, count_note, NULL, err, errlen);
    nb_st_close(f);
    return rc;
}

static void test_gpt2_map(void **state)
{
    char path[300], err[512], n[96];
    snprintf(path, sizeof path, "%s/gpt2.safetensors", dir);
    int wte = add("transformer.wte.weight", 2, V, C);
    add("transformer.wpe.weight", 2, S, C);
    int attn[L], fcw[L];
    for (int l = 0; l < L; l++) {
        snprintf(n, sizeof n, "transformer.h.%d.ln_1.weight", l), add(n, 1, C, 0);
        snprintf(n, sizeof n, "transformer.h.%d.ln_1.bias", l), add(n, 1, C, 0);
        snprintf(n, sizeof n, "transformer.h.%d.attn.c_attn.weight", l), attn[l] = add(n, 2, C, 3 * C);
        snprintf(n, sizeof n, "transformer.h.%d.attn.c_attn.bias", l), add(n, 1, 3 * C, 0);
        snprintf(n, sizeof n, "transformer.h.%d.attn.c_proj.weight", l), add(n, 2, C, C);
        snprintf(n, sizeof n, "transformer.h.%d.attn.c_proj.bias", l), add(n, 1, C, 0);
        snprintf(n, sizeof n, "transformer.h.%d.attn.bias", l), add(n, 2, S, S); /* mask buffer */
        snprintf(n, sizeof n, "transformer.h.%d.attn.masked_bias", l), add(n, 1, 1, 0);
        snprintf(n, sizeof n, "transformer.h.%d.ln_2.weight", l), add(n, 1, C, 0);
        snprintf(n, sizeof n, "transformer.h.%d.ln_2.bias", l), add(n, 1, C, 0);
        snprintf(n, sizeof n, "transformer.h.%d.mlp.c_fc.weight", l), fcw[l] = add(n, 2, C, F);
        snprintf(n, sizeof n, "transformer.h.%d.mlp.c_fc.bias", l), add(n, 1, F, 0);
        snprintf(n, sizeof n, "transformer.h.%d.mlp.c_proj.weight", l), add(n, 2, F, C);
        snprintf(n, sizeof n, "transformer.h.%d.mlp.c_proj.bias", l), add(n, 1, C, 0);
    }
    add("transformer.ln_f.weight", 1, C, 0);
    add("transformer.ln_f.bias", 1, C, 0);
    add("lm_head.weight", 2, V, C);
    write_mk(path);
    nb_model_config_t cfg = gpt_cfg();
    nb_part_spec_t spec = nb_part_spec_full(&cfg);
    nb_backend_t *be = nb_cpu_backend_new();
    nb_part_t *p;
    assert_int_equal(nb_part_new(be, &cfg, &spec, 1, NULL, &p, err, sizeof err), 0);
    notes = 0;
    if (load_file(path, NB_HF_NAMES_GPT2, p, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(notes, 1); /* lm_head skipped: tied; mask buffers quietly */
    float *q = part_host(p, "h1.qkv.w"), *fc = part_host(p, "h0.fc.w"), *w = part_host(p, "wte");
    for (int o = 0; o < 3 * C; o++) /* Nebula (out, in) = Conv1D [in, out] transposed */
        for (int i = 0; i < C; i++)
            assert_true(q[o * C + i] == val(attn[1], i * 3 * C + o));
    for (int o = 0; o < F; o++)
        for (int i = 0; i < C; i++)
            assert_true(fc[o * C + i] == val(fcw[0], i * F + o));
    for (int e = 0; e < V * C; e++)
        assert_true(w[e] == val(wte, e));
    free(q);
    free(fc);
    free(w);

    /* export with GPT-2 names, read back: the same bits; the file has no prefix */
    char out[300];
    snprintf(out, sizeof out, "%s/gpt2-out.safetensors", dir);
    assert_int_equal(nb_hf_save(out, p, NB_HF_NAMES_GPT2, err, sizeof err), 0);
    nb_st_file_t *f;
    assert_int_equal(nb_st_open(out, &f, err, sizeof err), 0);
    int j = nb_st_find(f, "h.1.attn.c_attn.weight");
    assert_true(j >= 0);
    assert_true(nb_st_tensor(f, j)->shape[0] == C && nb_st_tensor(f, j)->shape[1] == 3 * C);
    float back[C * 3 * C];
    assert_int_equal(nb_st_read_f32(f, j, back, err, sizeof err), 0);
    assert_memory_equal(back, mk[attn[1]].data, sizeof back);
    nb_model_config_t mc;
    nb_part_spec_t ms;
    nb_hf_names_t mn;
    assert_int_equal(nb_hf_config_from_metadata(f, &mc, &ms, &mn, err, sizeof err), 1);
    assert_memory_equal(&mc, &cfg, sizeof mc);
    assert_int_equal(mn, NB_HF_NAMES_GPT2);
    nb_st_close(f);
    nb_part_t *p2;
    assert_int_equal(nb_part_new(be, &cfg, &spec, 2, NULL, &p2, err, sizeof err), 0);
    assert_int_equal(load_file(out, NB_HF_NAMES_GPT2, p2, err, sizeof err), 0);
    float *a = malloc(nb_part_num_params(p) * 4), *b = malloc(nb_part_num_params(p) * 4);
    nb_be_to_host(be, a, nb_part_params(p), nb_part_num_params(p) * 4);
    nb_be_to_host(be, b, nb_part_params(p2), nb_part_num_params(p) * 4);
    assert_memory_equal(a, b, nb_part_num_params(p) * 4);
    /* Nebula names too */
    assert_int_equal(nb_hf_save(out, p, NB_HF_NAMES_NEBULA, err, sizeof err), 0);
    assert_int_equal(nb_part_init_params(p2, 3), 0);
    assert_int_equal(load_file(out, NB_HF_NAMES_NEBULA, p2, err, sizeof err), 0);
    nb_be_to_host(be, b, nb_part_params(p2), nb_part_num_params(p) * 4);
    assert_memory_equal(a, b, nb_part_num_params(p) * 4);
    free(a);
    free(b);
    nb_part_free(p2);

    /* a part with block 1 only takes its tensors and ignores the rest */
    nb_part_spec_t mid = { .embed = false, .first = 1, .last = 2, .head = false };
    assert_int_equal(nb_part_new(be, &cfg, &mid, 1, NULL, &p2, err, sizeof err), 0);
    if (load_file(path, NB_HF_NAMES_GPT2, p2, err, sizeof err))
        fail_msg("%s", err);
    q = part_host(p2, "h1.qkv.w");
    assert_true(q[C + 1] == val(attn[1], 1 * 3 * C + 1));
    free(q);
    nb_part_free(p2);

    /* refusals: a misshapen (not transposed) tensor, a missing one, an unknown one */
    free(mk[attn[0]].data);
    mk[attn[0]].shape[0] = 3 * C;
    mk[attn[0]].shape[1] = C;
    mk[attn[0]].data = calloc(3 * C * C, 4);
    write_mk(path);
    assert_int_equal(load_file(path, NB_HF_NAMES_GPT2, p, err, sizeof err), NB_EINVAL);
    print_message("  refused: %s\n", err);
    assert_non_null(strstr(err, "tensor 'transformer.h.0.attn.c_attn.weight' has shape [12, 4], the model expects [4, 12]"));
    mk[attn[0]].shape[0] = C;
    mk[attn[0]].shape[1] = 3 * C;
    snprintf(mk[fcw[1]].name, sizeof mk[0].name, "transformer.h.1.mlp.c_fc.weights");
    write_mk(path);
    assert_int_equal(load_file(path, NB_HF_NAMES_GPT2, p, err, sizeof err), NB_EINVAL);
    print_message("  refused: %s\n", err);
    assert_non_null(strstr(err, "tensor 'h.1.mlp.c_fc.weight' (Nebula's 'h1.fc.w') is missing"));
    snprintf(mk[fcw[1]].name, sizeof mk[0].name, "transformer.h.1.mlp.c_fc.weight");
    add("transformer.h.2.ln_1.weight", 1, C, 0);
    write_mk(path);
    assert_int_equal(load_file(path, NB_HF_NAMES_GPT2, p, err, sizeof err), NB_EINVAL);
    print_message("  refused: %s\n", err);
    assert_non_null(strstr(err, "tensor 'transformer.h.2.ln_1.weight' is not a tensor of this gpt2 model"));
    /* nothing changed by the refusals */
    w = part_host(p, "wte");
    assert_true(w[5] == val(wte, 5));
    free(w);
    free_mk();
    nb_part_free(p);
    nb_be_free(be);
}

static void test_bert_map(void **state)
{
    char path[300], err[512], n[96];
    snprintf(path, sizeof path, "%s/bert.safetensors", dir);
    add("embeddings.word_embeddings.weight", 2, V, C);
    int pe = add("embeddings.position_embeddings.weight", 2, S, C);
    int tt = add("embeddings.token_type_embeddings.weight", 2, 2, C);
    add("embeddings.LayerNorm.weight", 1, C, 0);
    add("embeddings.LayerNorm.bias", 1, C, 0);
    add("embeddings.position_ids", 2, 1, S); /* a buffer (I64 in real files) */
    int qkv[3], qb[3];
    for (int l = 0; l < L; l++) {
        static const char *const k3[3] = { "query", "key", "value" };
        for (int k = 0; k < 3; k++) {
            snprintf(n, sizeof n, "encoder.layer.%d.attention.self.%s.weight", l, k3[k]), qkv[k] = add(n, 2, C, C);
            snprintf(n, sizeof n, "encoder.layer.%d.attention.self.%s.bias", l, k3[k]), qb[k] = add(n, 1, C, 0);
        }
        snprintf(n, sizeof n, "encoder.layer.%d.attention.output.dense.weight", l), add(n, 2, C, C);
        snprintf(n, sizeof n, "encoder.layer.%d.attention.output.dense.bias", l), add(n, 1, C, 0);
        snprintf(n, sizeof n, "encoder.layer.%d.attention.output.LayerNorm.weight", l), add(n, 1, C, 0);
        snprintf(n, sizeof n, "encoder.layer.%d.attention.output.LayerNorm.bias", l), add(n, 1, C, 0);
        snprintf(n, sizeof n, "encoder.layer.%d.intermediate.dense.weight", l), add(n, 2, F, C);
        snprintf(n, sizeof n, "encoder.layer.%d.intermediate.dense.bias", l), add(n, 1, F, 0);
        snprintf(n, sizeof n, "encoder.layer.%d.output.dense.weight", l), add(n, 2, C, F);
        snprintf(n, sizeof n, "encoder.layer.%d.output.dense.bias", l), add(n, 1, C, 0);
        snprintf(n, sizeof n, "encoder.layer.%d.output.LayerNorm.weight", l), add(n, 1, C, 0);
        snprintf(n, sizeof n, "encoder.layer.%d.output.LayerNorm.bias", l), add(n, 1, C, 0);
    }
    add("pooler.dense.weight", 2, C, C);
    add("pooler.dense.bias", 1, C, 0);
    write_mk(path);
    nb_model_config_t cfg = { .n_layer = L, .d_model = C, .n_head = NH, .d_ff = F, .vocab = V, .max_seq = S,
                              .causal = false, .norm = NB_MODEL_NORM_POST, .head = NB_MODEL_HEAD_MLM,
                              .tie_embeddings = true };
    nb_part_spec_t spec = nb_part_spec_full(&cfg);
    nb_backend_t *be = nb_cpu_backend_new();
    nb_part_t *p;
    assert_int_equal(nb_part_new(be, &cfg, &spec, 1, NULL, &p, err, sizeof err), 0);
    notes = 0;
    if (load_file(path, NB_HF_NAMES_BERT, p, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(notes, 3); /* token type folded; pooler weight and bias skipped */
    float *w = part_host(p, "h1.qkv.w"), *b = part_host(p, "h1.qkv.b"), *wp = part_host(p, "wpe");
    for (int k = 0; k < 3; k++) /* rows [kC, (k+1)C) = query, key, value (out, in) */
        for (int e = 0; e < C * C; e++)
            assert_true(w[k * C * C + e] == val(qkv[k], e));
    for (int k = 0; k < 3; k++)
        for (int e = 0; e < C; e++)
            assert_true(b[k * C + e] == val(qb[k], e));
    for (int t = 0; t < S; t++) /* token type row 0 added to every position */
        for (int c = 0; c < C; c++)
            assert_true(wp[t * C + c] == val(pe, t * C + c) + val(tt, c));
    free(w);
    free(b);
    free(wp);
    /* BERT export and import: the same model (token types written as zeros) */
    char out[300];
    snprintf(out, sizeof out, "%s/bert-out.safetensors", dir);
    assert_int_equal(nb_hf_save(out, p, NB_HF_NAMES_BERT, err, sizeof err), 0);
    nb_part_t *p2;
    assert_int_equal(nb_part_new(be, &cfg, &spec, 2, NULL, &p2, err, sizeof err), 0);
    assert_int_equal(load_file(out, NB_HF_NAMES_BERT, p2, err, sizeof err), 0);
    size_t np = nb_part_num_params(p);
    float *x = malloc(np * 4), *y = malloc(np * 4);
    nb_be_to_host(be, x, nb_part_params(p), np * 4);
    nb_be_to_host(be, y, nb_part_params(p2), np * 4);
    assert_memory_equal(x, y, np * 4);
    free(x);
    free(y);
    nb_part_free(p2);
    /* GPT-2 names on a post-LN model are refused */
    assert_int_equal(nb_hf_save(out, p, NB_HF_NAMES_GPT2, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "GPT-2 names need a pre-LN causal model"));
    free_mk();
    nb_part_free(p);
    nb_be_free(be);
}

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

static void test_config_json(void **state)
{
    char path[300], err[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    nb_model_config_t c;
    nb_hf_names_t names;
    write_text(path, "{\"model_type\":\"gpt2\",\"n_layer\":12,\"n_embd\":768,\"n_head\":12,\"n_positions\":1024,"
                     "\"vocab_size\":50257,\"n_inner\":null,\"layer_norm_epsilon\":1e-05,"
                     "\"activation_function\":\"gelu_new\"}");
    assert_int_equal(nb_hf_config_read(path, &c, &names, err, sizeof err), 0);
    assert_int_equal(names, NB_HF_NAMES_GPT2);
    assert_true(c.n_layer == 12 && c.d_model == 768 && c.d_ff == 3072 && c.vocab == 50257 && c.max_seq == 1024 &&
                c.causal && c.norm == NB_MODEL_NORM_PRE && c.head == NB_MODEL_HEAD_LM && c.tie_embeddings);
    assert_true(nb_model_ln_eps(&c) == 1e-5f && c.gelu == NB_MODEL_GELU_TANH);
    /* a real BERT (all-MiniLM-L6-v2): eps 1e-12 and the erf GELU become
     * model settings */
    write_text(path, "{\"model_type\":\"bert\",\"num_hidden_layers\":6,\"hidden_size\":384,"
                     "\"num_attention_heads\":12,\"intermediate_size\":1536,\"vocab_size\":30522,"
                     "\"max_position_embeddings\":512,\"layer_norm_eps\":1e-12,\"hidden_act\":\"gelu\","
                     "\"type_vocab_size\":2,\"position_embedding_type\":\"absolute\"}");
    assert_int_equal(nb_hf_config_read(path, &c, &names, err, sizeof err), 0);
    assert_true(c.ln_eps == 1e-12f && c.gelu == NB_MODEL_GELU_ERF && c.n_layer == 6 && c.d_model == 384);
    /* what the family still lacks is refused, every reason named */
    write_text(path, "{\"model_type\":\"bert\",\"num_hidden_layers\":6,\"hidden_size\":384,"
                     "\"num_attention_heads\":12,\"intermediate_size\":1536,\"vocab_size\":30522,"
                     "\"max_position_embeddings\":512,\"layer_norm_eps\":0,\"hidden_act\":\"relu\","
                     "\"position_embedding_type\":\"relative_key\",\"is_decoder\":true}");
    assert_int_equal(nb_hf_config_read(path, &c, &names, err, sizeof err), NB_EINVAL);
    print_message("  refused: %s\n", err);
    assert_non_null(strstr(err, "hidden_act 'relu'"));
    assert_non_null(strstr(err, "layer_norm_eps 0"));
    assert_non_null(strstr(err, "position_embedding_type 'relative_key'"));
    assert_non_null(strstr(err, "is_decoder true"));
    write_text(path, "{\"model_type\":\"gpt2\",\"n_layer\":2,\"n_embd\":8,\"n_head\":2,\"n_positions\":8,"
                     "\"vocab_size\":8,\"activation_function\":\"gelu\",\"layer_norm_epsilon\":1e-6}");
    assert_int_equal(nb_hf_config_read(path, &c, &names, err, sizeof err), 0);
    assert_true(c.ln_eps == 1e-6f && c.gelu == NB_MODEL_GELU_ERF);
    write_text(path, "{\"model_type\":\"gpt2\",\"n_layer\":2,\"n_embd\":8,\"n_head\":2,\"n_positions\":8,"
                     "\"vocab_size\":8,\"activation_function\":\"gelu_fast\"}");
    assert_int_equal(nb_hf_config_read(path, &c, &names, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "activation_function 'gelu_fast'"));
    write_text(path, "{\"model_type\":\"bert\",\"num_hidden_layers\":6,\"hidden_size\":384,"
                     "\"num_attention_heads\":12,\"intermediate_size\":1536,\"vocab_size\":30522,"
                     "\"max_position_embeddings\":512,\"layer_norm_eps\":1e-5,\"hidden_act\":\"gelu_new\"}");
    assert_int_equal(nb_hf_config_read(path, &c, &names, err, sizeof err), 0);
    assert_true(c.norm == NB_MODEL_NORM_POST && !c.causal && c.head == NB_MODEL_HEAD_MLM && c.d_ff == 1536);
    write_text(path, "{\"model_type\":\"gpt2\",\"n_layer\":2,\"n_head\":2,\"n_positions\":8,\"vocab_size\":8}");
    assert_int_equal(nb_hf_config_read(path, &c, &names, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, "n_embd: missing"));
    write_text(path, "{\"model_type\":\"gpt2\",\"n_layer\":2,\"n_embd\":6,\"n_head\":4,\"n_positions\":8,\"vocab_size\":8}");
    assert_int_equal(nb_hf_config_read(path, &c, &names, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "divisible"));
    write_text(path, "{\"model_type\":\"llama\"}");
    assert_int_equal(nb_hf_config_read(path, &c, &names, err, sizeof err), NB_EINVAL);
    assert_non_null(strstr(err, "model_type 'llama'"));
    write_text(path, "{\"model_type\":");
    assert_int_equal(nb_hf_config_read(path, &c, &names, err, sizeof err), NB_EFORMAT);
    assert_non_null(strstr(err, "config.json:1:"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostile_headers),
        cmocka_unit_test(test_values_and_truncation),
        cmocka_unit_test(test_write_read),
        cmocka_unit_test(test_gpt2_map),
        cmocka_unit_test(test_bert_map),
        cmocka_unit_test(test_config_json),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
