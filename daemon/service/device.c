/*
 * device.c - opens the compute backend of one configured device
 * (device.h).
 */
#include "daemon/service/device.h"

#include <stdio.h>

nb_backend_t *nb_device_open(const nb_cfg_device_t *dev, char *why, size_t whylen)
{
    const char *reason = NULL;
    nb_backend_t *be = !dev || !dev->cuda ? nb_cpu_backend_new() : nb_cuda_backend_new(dev->index, &reason);
    if (!be)
        snprintf(why, whylen, "device %s: %s", dev ? dev->text : "cpu", reason ? reason : "cannot be opened");
    return be;
}
