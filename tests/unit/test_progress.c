/* Unit tests for lib/core/cf_progress.c: what the bar and the JSON lines say. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_progress.h"
#include "cf_testutil.h"

/* Everything written to FILE so far. */
static char *s_contents(FILE *file)
{
    fflush(file);
    long len = ftell(file);
    char *text = calloc(1, (size_t)len + 1);
    rewind(file);
    assert_int_equal(fread(text, 1, (size_t)len, file), (size_t)len);
    return text;
}

static void test_bar(void **state)
{
    FILE *out = tmpfile();
    cf_progress_t *bar = cf_progress_new(CF_PROGRESS_BAR, out);
    cf_progress_update(bar, "encode", 0, 200);
    cf_progress_update(bar, "encode", 100, 200); /* within 100 ms: normally not drawn */
    cf_progress_update(bar, "encode", 200, 200); /* complete: always drawn */
    cf_progress_update(bar, "encode", 200, 200); /* and only once */
    cf_progress_finish(bar, NULL);
    char *text = s_contents(out);
    assert_string_equal(strstr(text, "\rencode  [........................]   0%  0/200 frames "),
                        text);
    const char *last = strrchr(text, '\r');
    assert_non_null(strstr(last, "encode  [########################] 100%  200/200 frames"));
    assert_non_null(strstr(last, " fps  ETA "));
    assert_int_equal(text[strlen(text) - 1], '\n');
    /* The middle update is skipped unless the machine stalled 100 ms. */
    int draws = 0, complete = 0;
    for (const char *p = text; (p = strchr(p, '\r')); p++)
        draws++;
    for (const char *p = text; (p = strstr(p, "100%")); p++)
        complete++;
    assert_true(draws == 2 || draws == 3);
    assert_int_equal(complete, 1);
    free(text);
    cf_progress_destroy(&bar);
    assert_null(bar);
    fclose(out);
}

static void test_json_and_units(void **state)
{
    FILE *out = tmpfile();
    cf_progress_t *p = cf_progress_new(CF_PROGRESS_JSON, out);
    cf_progress_set_unit(p, "bytes");
    cf_progress_update(p, "download", 0, 1048576);
    cf_progress_update(p, "download", 1048576, 1048576);
    cf_progress_finish(p, "\"ok\":true");
    char *text = s_contents(out);
    assert_non_null(strstr(text, "{\"phase\":\"download\",\"done\":0,\"total\":1048576,"
                                 "\"percent\":0.0,\"per_second\":0.0,\"eta_seconds\":-1.0,"
                                 "\"unit\":\"bytes\"}\n"));
    assert_non_null(strstr(text, "\"done\":1048576,\"total\":1048576,\"percent\":100.0"));
    assert_non_null(strstr(text, "\n{\"phase\":\"done\",\"ok\":true}\n"));
    assert_int_equal(cf_test_count_lines(text), 3);
    free(text);
    cf_progress_destroy(&p);
    fclose(out);

    out = tmpfile();
    p = cf_progress_new(CF_PROGRESS_BAR, out);
    cf_progress_set_unit(p, "bytes");
    cf_progress_update(p, "fetch", 3 * 1048576, 4 * 1048576);
    text = s_contents(out);
    assert_non_null(strstr(text, "fetch   [##################......]  75%  3.0/4.0 MiB"));
    free(text);
    cf_progress_destroy(&p);
    fclose(out);
}

static void test_modes_and_durations(void **state)
{
    cf_progress_mode_t mode;
    FILE *out = tmpfile(); /* not a terminal */
    assert_int_equal(cf_progress_mode_parse("auto", out, &mode), 0);
    assert_int_equal(mode, CF_PROGRESS_NONE);
    assert_int_equal(cf_progress_mode_parse("bar", out, &mode), 0);
    assert_int_equal(mode, CF_PROGRESS_BAR);
    assert_int_equal(cf_progress_mode_parse("json", out, &mode), 0);
    assert_int_equal(mode, CF_PROGRESS_JSON);
    assert_int_equal(cf_progress_mode_parse("fancy", out, &mode), -1);
    cf_progress_t *none = cf_progress_new(CF_PROGRESS_NONE, out);
    cf_progress_update(none, "encode", 5, 10);
    cf_progress_finish(none, "\"ok\":true");
    assert_int_equal(ftell(out), 0);
    cf_progress_destroy(&none);
    fclose(out);

    char buf[32];
    assert_string_equal(cf_progress_format_duration(0, buf, sizeof buf), "0:00");
    assert_string_equal(cf_progress_format_duration(75.4, buf, sizeof buf), "1:15");
    assert_string_equal(cf_progress_format_duration(3725, buf, sizeof buf), "1:02:05");
    assert_string_equal(cf_progress_format_duration(-1, buf, sizeof buf), "--:--");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bar),
        cmocka_unit_test(test_json_and_units),
        cmocka_unit_test(test_modes_and_durations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
