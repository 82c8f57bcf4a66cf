/* libFuzzer target for the control-message decoder (proto/cf_proto.c).
 * Whatever decodes must re-encode, and decode again to an equal message:
 * the decoder may accept nothing the encoder would refuse. */
#include <stdint.h>
#include <stdlib.h>

#include "cf_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cf_msg_t msg, again;
    char err[256];
    if (cf_msg_decode(data, size, &msg, err, sizeof err) < 0)
        return 0;
    uint8_t *encoded = NULL;
    size_t encoded_size = 0;
    if (cf_msg_encode(&msg, &encoded, &encoded_size, err, sizeof err) < 0)
        abort(); /* decoded but not encodable: a check is missing on one side */
    if (cf_msg_decode(encoded, encoded_size, &again, err, sizeof err) < 0)
        abort();
    if (!cf_msg_equal(&msg, &again))
        abort();
    cf_msg_clear(&again);
    cf_msg_clear(&msg);
    free(encoded);
    return 0;
}
