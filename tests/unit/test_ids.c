/* Unit tests of lib/core/cf_ids: the canonical text of an id. Every case
 * spelling of a UUID parses to the same lower-case text; anything that is
 * not exactly the 8-4-4-4-12 form is refused and leaves the output alone.
 * Expectations are written out here (RFC 9562's text form), not derived
 * from the code under test. */
#include <stdio.h>
#include <string.h>

#include "cf_ids.h"
#include "cf_testutil.h"

#define S_LOWER "0f8c3a2e-9b4d-4e6f-a1b2-c3d4e5f60789"

static void test_lower_case_is_kept(void **state)
{
    char out[CF_ID_CHARS + 1];
    assert_true(cf_id_parse(S_LOWER, out));
    assert_string_equal(out, S_LOWER);
    assert_true(cf_id_parse("00000000-0000-0000-0000-000000000000", out));
    assert_string_equal(out, "00000000-0000-0000-0000-000000000000");
    assert_true(cf_id_parse("ffffffff-ffff-ffff-ffff-ffffffffffff", out));
    assert_string_equal(out, "ffffffff-ffff-ffff-ffff-ffffffffffff");
}

static void test_any_case_becomes_lower(void **state)
{
    static const char *const spellings[] = {
        "0F8C3A2E-9B4D-4E6F-A1B2-C3D4E5F60789",
        "0f8C3a2E-9b4D-4e6F-a1B2-c3D4e5F60789",
        "0F8c3A2e-9B4d-4E6f-A1b2-C3d4E5f60789",
    };
    for (size_t i = 0; i < sizeof spellings / sizeof spellings[0]; i++) {
        char out[CF_ID_CHARS + 1];
        if (!cf_id_parse(spellings[i], out))
            fail_msg("%s was refused", spellings[i]);
        assert_string_equal(out, S_LOWER);
    }
    assert_true(cf_id_parse("ABCDEFAB-CDEF-ABCD-EFAB-CDEFABCDEFAB", (char[CF_ID_CHARS + 1]){0}));
}

static void test_in_place(void **state)
{
    char text[128] = "0F8C3A2E-9B4D-4E6F-A1B2-C3D4E5F60789";
    assert_true(cf_id_parse(text, text));
    assert_string_equal(text, S_LOWER);
    /* Refused in place: the text stays as it was. */
    char bad[128] = "0F8C3A2E-9B4D-4E6F-A1B2-C3D4E5F6078G";
    assert_false(cf_id_parse(bad, bad));
    assert_string_equal(bad, "0F8C3A2E-9B4D-4E6F-A1B2-C3D4E5F6078G");
}

static void test_refused(void **state)
{
    static const char *const refused[] = {
        "",
        "not-a-uuid",
        "0f8c3a2e-9b4d-4e6f-a1b2-c3d4e5f6078",           /* 35 characters */
        "0f8c3a2e-9b4d-4e6f-a1b2-c3d4e5f607899",         /* 37 */
        "0f8c3a2e-9b4d-4e6f-a1b2-c3d4e5f60789 ",         /* trailing space */
        " 0f8c3a2e-9b4d-4e6f-a1b2-c3d4e5f60789",         /* leading space */
        "{0f8c3a2e-9b4d-4e6f-a1b2-c3d4e5f60789}",        /* braces */
        "urn:uuid:0f8c3a2e-9b4d-4e6f-a1b2-c3d4e5f60789", /* URN */
        "0f8c3a2e9b4d4e6fa1b2c3d4e5f60789",              /* no hyphens */
        "0f8c3a2e-9b4d4-e6f-a1b2-c3d4e5f60789",          /* hyphen moved */
        "0f8c3a2e_9b4d_4e6f_a1b2_c3d4e5f60789",          /* other separators */
        "0f8c3a2e-9b4d-4e6f-a1b2-c3d4e5f6078g",          /* g */
        "0f8c3a2e-9b4d-4e6f-a1b2-c3d4e5f6078G",          /* G */
        "0x8c3a2e-9b4d-4e6f-a1b2-c3d4e5f60789",          /* x */
        "0f8c3a2e-9b4d-4e6f-a1b2-c3d4e5f6078\xc3",       /* a UTF-8 lead byte */
        "0f8c3a2e-9b4d-4e6f-a1b2-c3d4e5f6078-",          /* hyphen for a digit */
        "0f8c3a2e-9b4d-4e6f-a1b2-c3d4e5f60789/segments", /* a longer path */
        "0f8c3a2e-9b4d-4e6f-a1b2-c3d4e5f60789\n",        /* newline */
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        char out[CF_ID_CHARS + 1] = "untouched";
        if (cf_id_parse(refused[i], out))
            fail_msg("'%s' was accepted as %s", refused[i], out);
        assert_string_equal(out, "untouched");
    }
    /* A NUL inside: the text ends there, so it is too short. */
    char cut[CF_ID_CHARS + 1];
    memcpy(cut, S_LOWER, sizeof cut);
    cut[20] = '\0';
    assert_false(cf_id_parse(cut, (char[CF_ID_CHARS + 1]){0}));
    assert_false(cf_id_parse(NULL, (char[CF_ID_CHARS + 1]){0}));
}

/* Every one-character change of a valid id: a hex digit for a hyphen, a
 * hyphen for a digit, and each byte that is not a hex digit, at every
 * position. Only hex digits where digits belong (in either case) pass. */
static void test_every_position(void **state)
{
    for (int pos = 0; pos < CF_ID_CHARS; pos++) {
        bool hyphen = pos == 8 || pos == 13 || pos == 18 || pos == 23;
        for (int c = 1; c < 256; c++) {
            char text[CF_ID_CHARS + 1], out[CF_ID_CHARS + 1];
            memcpy(text, S_LOWER, sizeof text);
            text[pos] = (char)c;
            bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
            bool expected = hyphen ? c == '-' : hex;
            if (cf_id_parse(text, out) != expected)
                fail_msg("byte 0x%02x at %d: expected %s", c, pos,
                         expected ? "accepted" : "refused");
            if (expected && !hyphen) {
                char lower = (char)(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c);
                assert_int_equal(out[pos], lower);
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lower_case_is_kept), cmocka_unit_test(test_any_case_becomes_lower),
        cmocka_unit_test(test_in_place),           cmocka_unit_test(test_refused),
        cmocka_unit_test(test_every_position),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
