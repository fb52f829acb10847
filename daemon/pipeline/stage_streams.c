/*
 * stage_streams.c - the codec streams of a stage's cuts in its checkpoint
 * (docs/pipeline.md, "Checkpoints"): error-feedback residuals and delta
 * bases, as extra tensors of the stage's file, named by the cut (the block
 * boundary) and the stream's role, so that a restore with the same cuts
 * puts them back and one with other cuts starts those streams empty.
 *
 * Per stream with state, "codec.cutL.DIR.ROLE" (DIR fwd|bwd, ROLE
 * send|recv) plus:
 *   .head   8 floats: has residual, residual length (low, high 16 bits),
 *           base count (low, high 16 bits), 0, 0, 0
 *   .resid  the residual
 *   .keys   8 floats per base, oldest first: its key in four 16-bit parts,
 *           visit count and length in two 16-bit parts each
 *   .baseI  base I
 * Every number is a whole number below 65536, so float holds it exactly.
 * Compute thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/pipeline/stage_rt_internal.h"

static const char *const role[4] = { "fwd.send", "fwd.recv", "bwd.send", "bwd.recv" };

/* "codec.cutL.fwd.send": the block boundary the stream crosses. */
static void stream_name(nb_host_t *h, int i, int k, char *buf, size_t len)
{
    const nb_part_spec_t *ps = nb_part_spec(nb_host_part(h, i));
    int cut = (k == 0 || k == 3) ? ps->last : ps->first;
    snprintf(buf, len, "codec.cut%d.%s", cut, role[k]);
}

static int add(nb_backend_t *be, nb_ckpt_snap_t *snap, const char *name, const char *what, const float *dev,
               size_t n, bool on_device)
{
    char full[128];
    snprintf(full, sizeof full, "%s.%s", name, what);
    float *host = malloc((n ? n : 1) * sizeof(float));
    if (!host)
        return NB_ENOMEM;
    if (on_device)
        nb_be_to_host(be, host, dev, n * sizeof(float));
    else
        memcpy(host, dev, n * sizeof(float));
    int64_t shape[1] = { (int64_t)n };
    int rc = nb_ckpt_snap_add(snap, full, 1, shape, host);
    free(host);
    return rc;
}

int nb__stage_streams_snapshot(nb_host_t *h, int i, nb_backend_t *be, nb_ckpt_snap_t *snap)
{
    for (int k = 0; k < 4; k++) {
        nb_codec_stream_t *st = nb_host_stream(h, i, k);
        if (nb_codec_stream_empty(st))
            continue;
        char name[96];
        stream_name(h, i, k, name, sizeof name);
        size_t rn = 0, nb = nb_codec_stream_num_bases(st);
        const float *resid = nb_codec_stream_residual_state(st, &rn);
        if (rn >= (1ull << 32) || nb >= (1ull << 32))
            return NB_ERANGE;
        float head[8] = { resid ? 1.0f : 0.0f, (float)(rn & 0xffff), (float)(rn >> 16), (float)(nb & 0xffff),
                          (float)(nb >> 16), 0, 0, 0 };
        int rc = add(be, snap, name, "head", head, 8, false);
        if (rc == 0 && resid)
            rc = add(be, snap, name, "resid", resid, rn, true);
        float *keys = nb ? calloc(nb * 8, sizeof(float)) : NULL;
        if (nb && !keys)
            return NB_ENOMEM;
        for (size_t b = 0; rc == 0 && b < nb; b++) {
            uint64_t key;
            uint32_t visit;
            size_t n;
            const float *base = nb_codec_stream_base_state(st, b, &key, &visit, &n);
            if (n >= (1ull << 32)) {
                rc = NB_ERANGE;
                break;
            }
            float *r = keys + 8 * b;
            for (int q = 0; q < 4; q++)
                r[q] = (float)((key >> (16 * q)) & 0xffff);
            r[4] = (float)(visit & 0xffff);
            r[5] = (float)(visit >> 16);
            r[6] = (float)(n & 0xffff);
            r[7] = (float)(n >> 16);
            char what[32];
            snprintf(what, sizeof what, "base%zu", b);
            rc = add(be, snap, name, what, base, n, true);
        }
        if (rc == 0 && nb)
            rc = add(be, snap, name, "keys", keys, nb * 8, false);
        free(keys);
        if (rc)
            return rc;
    }
    return 0;
}

static bool whole16(float v)
{
    return v >= 0 && v < 65536 && v == (float)(uint32_t)v;
}

/* Checks that extra `full` holds exactly want values before the caller
 * allocates for it: the sizes in a stream's header and key table come from
 * the file and must agree with the tensors the file really holds. */
static int expect_numel(const char *dir, const nb_ckpt_manifest_t *m, const char *full, size_t want, char *err,
                        size_t errlen)
{
    size_t have = 0;
    int rc = nb_ckpt_extra_numel(dir, m, full, &have, err, errlen);
    if (rc)
        return rc;
    if (have != want) {
        snprintf(err, errlen, "%s: %s holds %zu values, its stream header says %zu", dir, full, have, want);
        return NB_EFORMAT;
    }
    return 0;
}

int nb__stage_streams_restore(nb_host_t *h, int i, nb_backend_t *be, const char *dir, const nb_ckpt_manifest_t *m,
                              char *err, size_t errlen)
{
    err[0] = '\0';
    for (int k = 0; k < 4; k++) {
        nb_codec_stream_t *st = nb_host_stream(h, i, k);
        nb_codec_stream_reset(st);
        char name[96], full[128];
        stream_name(h, i, k, name, sizeof name);
        float head[8];
        snprintf(full, sizeof full, "%s.head", name);
        int rc = nb_ckpt_read_extra(dir, m, full, head, 8, err, errlen);
        if (rc == NB_ENOENT)
            continue; /* no state at this cut (or another split): starts empty */
        if (rc)
            return rc;
        for (int q = 0; q < 8; q++)
            if (!whole16(head[q])) {
                snprintf(err, errlen, "%s: %s: not a stream header", dir, full);
                return NB_EFORMAT;
            }
        size_t rn = (size_t)head[1] | (size_t)head[2] << 16, nb = (size_t)head[3] | (size_t)head[4] << 16;
        float *buf = NULL, *keys = NULL, *dev = NULL;
        if (head[0] != 0) {
            snprintf(full, sizeof full, "%s.resid", name);
            if ((rc = expect_numel(dir, m, full, rn, err, errlen)))
                goto out;
            if (!(buf = malloc((rn ? rn : 1) * sizeof(float))) || !(dev = nb_be_alloc(be, (rn ? rn : 1) * sizeof(float)))) {
                rc = NB_ENOMEM;
                goto out;
            }
            if ((rc = nb_ckpt_read_extra(dir, m, full, buf, rn, err, errlen)))
                goto out;
            nb_be_from_host(be, dev, buf, rn * sizeof(float));
            if ((rc = nb_codec_stream_set_residual(st, dev, rn)))
                goto out;
            free(buf);
            nb_be_dealloc(be, dev);
            buf = NULL;
            dev = NULL;
        }
        if (nb) {
            snprintf(full, sizeof full, "%s.keys", name);
            if ((rc = expect_numel(dir, m, full, nb * 8, err, errlen)))
                goto out;
            if (!(keys = malloc(nb * 8 * sizeof(float)))) {
                rc = NB_ENOMEM;
                goto out;
            }
            if ((rc = nb_ckpt_read_extra(dir, m, full, keys, nb * 8, err, errlen)))
                goto out;
        }
        for (size_t b = 0; b < nb; b++) {
            const float *r = keys + 8 * b;
            for (int q = 0; q < 8; q++)
                if (!whole16(r[q])) {
                    snprintf(err, errlen, "%s: %s: not a stream key table", dir, full);
                    rc = NB_EFORMAT;
                    goto out;
                }
            uint64_t key = 0;
            for (int q = 0; q < 4; q++)
                key |= (uint64_t)r[q] << (16 * q);
            uint32_t visit = (uint32_t)r[4] | (uint32_t)r[5] << 16;
            size_t n = (size_t)r[6] | (size_t)r[7] << 16;
            snprintf(full, sizeof full, "%s.base%zu", name, b);
            if ((rc = expect_numel(dir, m, full, n, err, errlen)))
                goto out;
            if (!(buf = malloc((n ? n : 1) * sizeof(float))) || !(dev = nb_be_alloc(be, (n ? n : 1) * sizeof(float)))) {
                rc = NB_ENOMEM;
                goto out;
            }
            if ((rc = nb_ckpt_read_extra(dir, m, full, buf, n, err, errlen)))
                goto out;
            nb_be_from_host(be, dev, buf, n * sizeof(float));
            if ((rc = nb_codec_stream_add_base(st, key, visit, dev, n)))
                goto out;
            free(buf);
            nb_be_dealloc(be, dev);
            buf = NULL;
            dev = NULL;
        }
    out:
        free(buf);
        free(keys);
        if (dev)
            nb_be_dealloc(be, dev);
        if (rc) {
            nb_codec_stream_reset(st);
            if (!err[0] || rc == NB_ENOMEM || rc == NB_ELIMIT)
                snprintf(err, errlen, "%s: codec stream %s: %s", dir, name, nb_strerror(rc));
            return rc;
        }
    }
    return 0;
}
