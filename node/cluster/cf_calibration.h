/* cf_calibration: measures the encoders' frames/s (cf_caps_calibrate) off
 * the node's control plane, as an actor.
 *
 *     zactor_t *calibration = cf_calibration_new(caps, data_dir);
 *     ... it says "CALIBRATED":
 *     cf_caps_t *measured = cf_calibration_take(calibration);
 *     zactor_destroy(&calibration);
 *
 * It sends once on its pipe
 *     "CALIBRATED"  the figures are in (an encoder that failed to encode is
 *                   dropped from them and logged); take them
 *     "FAILED"      the measurement could not start (logged): encoder
 *                   speeds stay unknown
 * and accepts
 *     "TAKE"        answered with caps(p): the measured cf_caps_t, which is
 *                   the receiver's from then on (NULL when there is none, or
 *                   no longer). Call cf_calibration_take rather than
 *                   sending it yourself.
 *     $TERM         stops a measurement in progress; the actor ends within
 *                   300 ms whatever the encoder does, and frees figures
 *                   nobody took.
 *
 * The encoding runs in a worker thread of the actor's: an encoder cannot be
 * interrupted mid-frame, and under load (or a sanitizer) draining one can
 * take longer than a node may take to leave. On $TERM the actor asks the
 * worker to stop, waits for it at most 300 ms and lets it go; the worker is
 * detached and frees what it still holds when it finishes. */
#ifndef CF_CALIBRATION_H
#define CF_CALIBRATION_H

#include <czmq.h>

#include "cf_caps.h"

/* Starts measuring a copy of CAPS, caching the figures in DATA_DIR (both
 * copied; DATA_DIR may be NULL: no cache). NULL when out of memory. */
zactor_t *cf_calibration_new(const cf_caps_t *caps, const char *data_dir);

/* After "CALIBRATED": asks SELF for the figures and returns them (the
 * caller's), or NULL when there are none. */
cf_caps_t *cf_calibration_take(zactor_t *self);

#endif
