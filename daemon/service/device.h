/*
 * device.h - opens the compute backend of one configured device (`devices:`
 * in a daemon's or a tool's config): the CPU backend for `cpu`, the CUDA
 * backend for `cuda:N`. One place for what nebulad's stages, nebula-train
 * and nebula-electra do with a device entry.
 */
#ifndef NB_SERVICE_DEVICE_H
#define NB_SERVICE_DEVICE_H

#include <stddef.h>
#include "daemon/config/config.h"
#include "kernels/backend.h"

/* Opens dev's backend (dev NULL: the CPU). Returns it (free with
 * nb_be_free), or NULL with "device TEXT: REASON" in why (the CUDA
 * backend's own reason: no library, no such device, ...). */
nb_backend_t *nb_device_open(const nb_cfg_device_t *dev, char *why, size_t whylen);

#endif
