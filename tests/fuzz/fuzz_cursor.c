/* libFuzzer target for the list cursor (cf_db_cursor_decode in
 * lib/store/cf_db_compositions.c), which every GET /api/v1/compositions
 * with ?cursor= parses from the client. Whatever decodes must encode back
 * to a cursor that decodes to the same parts; nothing else may decode. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cf_db.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *cursor = malloc(size + 1);
    if (!cursor)
        return 0;
    memcpy(cursor, data, size);
    cursor[size] = '\0';
    char epoch_us[24], id[CF_DB_ID_LEN];
    if (cf_db_cursor_decode(cursor, epoch_us, id) == 0) {
        char *again = cf_db_cursor_encode(epoch_us, id);
        char epoch2[24], id2[CF_DB_ID_LEN];
        if (!again || cf_db_cursor_decode(again, epoch2, id2) != 0 || strcmp(epoch_us, epoch2) ||
            strcmp(id, id2))
            abort();
        free(again);
    }
    free(cursor);
    return 0;
}
