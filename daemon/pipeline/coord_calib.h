/*
 * coord_calib.h - codec calibration for the coordinator's planner: what a
 * candidate codec costs (ratio, encode and decode seconds per raw byte) and
 * how much it loses (round-trip relative error), measured once on a
 * synthetic boundary tensor when the planner is built (coord_plan.c);
 * docs/planner.md, "Codec quality", says where live tensors take over.
 */
#ifndef NB_COORD_CALIB_H
#define NB_COORD_CALIB_H

#include <stddef.h>
#include "daemon/planner/cost.h"

/* Fills h[0..n) with the synthetic tensor codecs are calibrated on (ratio,
 * speed and round-trip relative error, nb_cost_codec_t.err): deterministic,
 * roughly Gaussian values with standard deviation about 1, as activations
 * after a LayerNorm. Not live tensors: docs/planner.md, "Codec quality". */
void nb_cplan_calib_data(float *h, size_t n);

/* Calibrates codec spec text on a rows x cols tensor (one boundary's
 * micro-batch): encodes and decodes it three times on the CPU backend, with
 * a sender and a receiver stream for stateful codecs as on a link, and
 * fills *out (spec, lossiness, ratio, best encode and decode seconds per
 * raw byte; fp32 costs 0) and *rel_err, ||x - decode(encode(x))|| / ||x||
 * of the first round trip (fresh streams, as a key's first visit).
 * Errors: NB_EINVAL (a spec that does not parse), the codec's own code when
 * it fails on the tensor, NB_ENOMEM; err names job.planner.codecs and the
 * spec. */
int nb_cplan_calibrate(const char *text, int rows, int cols, nb_cost_codec_t *out, double *rel_err, char *err,
                       size_t errlen);

#endif
