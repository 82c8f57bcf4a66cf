#define _GNU_SOURCE
#include "cf_json.h"
#include "cf_s3_names.h"
#include "cf_comp.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ errors */

static void s_add(cf_comp_errors_t *errors, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void s_add(cf_comp_errors_t *errors, const char *fmt, ...)
{
    if (!errors)
        return;
    char *item = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&item, fmt, ap);
    va_end(ap);
    if (n < 0)
        return; /* out of memory: the caller still sees count > 0 or NULL */
    if (errors->count == errors->cap) {
        int cap = errors->cap ? errors->cap * 2 : 8;
        char **items = realloc(errors->items, sizeof(char *) * (size_t)cap);
        if (!items) {
            free(item);
            return;
        }
        errors->items = items;
        errors->cap = cap;
    }
    errors->items[errors->count++] = item;
}

void cf_comp_errors_free(cf_comp_errors_t *errors)
{
    if (!errors)
        return;
    for (int i = 0; i < errors->count; i++)
        free(errors->items[i]);
    free(errors->items);
    errors->items = NULL;
    errors->count = errors->cap = 0;
}

char *cf_comp_errors_join(const cf_comp_errors_t *errors)
{
    size_t len = 1;
    for (int i = 0; i < errors->count; i++)
        len += strlen(errors->items[i]) + 1;
    char *text = malloc(len);
    if (!text)
        return NULL;
    text[0] = '\0';
    for (int i = 0; i < errors->count; i++) {
        if (i)
            strcat(text, "\n");
        strcat(text, errors->items[i]);
    }
    return text;
}

/* ------------------------------------------------------------------ names */

static const char *const s_priorities[] = {"high", "default", "low", NULL};
static const char *const s_containers[] = {"mp4", "mkv", NULL};
static const char *const s_codecs[] = {"h264", "hevc", NULL};
static const char *const s_presets[] = {"fast", "balanced", "high", NULL};
static const char *const s_encoders[] = {"auto", "cpu", "gpu", NULL};

const char *cf_comp_priority_name(cf_priority_t priority)
{
    return s_priorities[priority];
}

const char *cf_comp_container_name(cf_container_t container)
{
    return s_containers[container];
}

const char *cf_comp_codec_name(cf_codec_t codec)
{
    return s_codecs[codec];
}

const char *cf_comp_preset_name(cf_preset_t preset)
{
    return s_presets[preset];
}

const char *cf_comp_encoder_name(cf_encoder_t encoder)
{
    return s_encoders[encoder];
}

/* Preset table, after the origin service: x264 preset, CRF, AAC bitrate,
 * faststart. The x264 preset names live in cf_media. */
static const struct {
    int crf;
    int64_t audio_bitrate;
    bool faststart;
} s_preset_defaults[] = {
    [CF_PRESET_FAST] = {28, 128000, false},
    [CF_PRESET_BALANCED] = {23, 192000, true},
    [CF_PRESET_HIGH] = {18, 256000, true},
};

/* ------------------------------------------------------------------ helpers */

/* A number for messages: "1.0" for integral values, else up to 6 digits. */
static const char *s_num(double v, char *buf, size_t len)
{
    if (v == floor(v) && fabs(v) < 1e15)
        snprintf(buf, len, "%.1f", v);
    else
        snprintf(buf, len, "%.6g", v);
    return buf;
}

static void s_add_one_of(cf_comp_errors_t *errors, const char *path, const char *const *names)
{
    char list[128] = "";
    for (int i = 0; names[i]; i++) {
        if (i)
            strcat(list, ", ");
        strcat(list, names[i]);
    }
    s_add(errors, "%s: must be one of %s", path, list);
}

/* Looks VALUE up in NAMES; returns its index or -1 after adding a problem. */
static int s_enum(json_t *value, const char *path, const char *const *names,
                  cf_comp_errors_t *errors)
{
    if (json_is_string(value)) {
        for (int i = 0; names[i]; i++)
            if (!strcmp(json_string_value(value), names[i]))
                return i;
    }
    s_add_one_of(errors, path, names);
    return -1;
}

/* Reports every key of OBJ that is not in KNOWN. PREFIX is "" or "clips[2].". */
static void s_unknown_keys(json_t *obj, const char *prefix, const char *const *known,
                           cf_comp_errors_t *errors)
{
    const char *key;
    json_t *value;
    json_object_foreach(obj, key, value)
    {
        bool found = false;
        for (int i = 0; known[i] && !found; i++)
            found = !strcmp(key, known[i]);
        if (!found)
            s_add(errors, "%s%s: unknown field", prefix, key);
    }
}

static int64_t s_gcd(int64_t a, int64_t b)
{
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

int cf_comp_fps_from_double(double fps, int *num, int *den)
{
    if (!isfinite(fps) || fps <= 0 || fps > 1e6)
        return -1;
    if (fabs(fps - round(fps)) < 1e-9) {
        *num = (int)round(fps);
        *den = 1;
        return 0;
    }
    /* NTSC-family rates are written rounded (29.97, 23.976, 59.94): the
     * rate they stand for is N * 1000/1001. */
    double ntsc = fps * 1.001;
    if (fabs(ntsc - round(ntsc)) < 1e-3 && round(ntsc) >= 1) {
        int64_t n = (int64_t)round(ntsc) * 1000, d = 1001, g = s_gcd(n, d);
        *num = (int)(n / g);
        *den = (int)(d / g);
        return 0;
    }
    int64_t best_n = (int64_t)round(fps), best_d = 1;
    double best_err = fabs(fps - (double)best_n);
    for (int64_t d = 2; d <= 1001 && best_err > 1e-9; d++) {
        int64_t n = (int64_t)round(fps * (double)d);
        double e = fabs(fps - (double)n / (double)d);
        if (e < best_err - 1e-12) {
            best_err = e;
            best_n = n;
            best_d = d;
        }
    }
    int64_t g = s_gcd(best_n, best_d);
    if (best_n / g < 1 || best_n / g > 1000000)
        return -1;
    *num = (int)(best_n / g);
    *den = (int)(best_d / g);
    return 0;
}

/* Parses "30", "29.97" or "30000/1001". Returns 0 or -1. */
static int s_fps_from_string(const char *text, int *num, int *den)
{
    char *end = NULL;
    errno = 0;
    if (strchr(text, '/')) {
        long n = strtol(text, &end, 10);
        if (errno || end == text || *end != '/' || n <= 0 || n > 1000000)
            return -1;
        const char *dtext = end + 1;
        if (!isdigit((unsigned char)*dtext))
            return -1;
        long d = strtol(dtext, &end, 10);
        if (errno || *end || d <= 0 || d > 1000000)
            return -1;
        int64_t g = s_gcd(n, d);
        *num = (int)(n / g);
        *den = (int)(d / g);
        return 0;
    }
    if (!*text || isspace((unsigned char)*text))
        return -1;
    double v = strtod(text, &end);
    if (errno || end == text || *end)
        return -1;
    return cf_comp_fps_from_double(v, num, den);
}

/* Parses a bitrate: a JSON integer (bits/s) or a string "192k", "5M",
 * "2.5M", "128000". Returns bits/s, or -1 when malformed. */
static int64_t s_bitrate(json_t *value)
{
    if (json_is_integer(value))
        return json_integer_value(value) > 0 ? json_integer_value(value) : -1;
    if (!json_is_string(value))
        return -1;
    const char *text = json_string_value(value);
    if (!isdigit((unsigned char)*text))
        return -1;
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text)
        return -1;
    double scale = 1;
    if (*end == 'k' || *end == 'K')
        scale = 1e3, end++;
    else if (*end == 'm' || *end == 'M')
        scale = 1e6, end++;
    if (*end || !isfinite(v) || v <= 0 || v * scale > 1e12)
        return -1;
    return (int64_t)llround(v * scale);
}

static bool s_is_hex(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!isxdigit((unsigned char)s[i]))
            return false;
    return true;
}

static void s_check_source(const char *source, const char *path, cf_comp_errors_t *errors)
{
    size_t len = strlen(source);
    if (!len) {
        s_add(errors, "%s: must not be empty", path);
        return;
    }
    if (len > CF_COMP_MAX_SOURCE) {
        s_add(errors, "%s: longer than %d characters", path, CF_COMP_MAX_SOURCE);
        return;
    }
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)source[i] < 0x20 || source[i] == 0x7f) {
            s_add(errors, "%s: contains control characters", path);
            return;
        }
    }
    if (!strncmp(source, "file://", 7)) {
        const char *p = source + 7;
        if (*p != '/' || !p[1])
            s_add(errors, "%s: file:// URL needs an absolute path (file:///dir/name)", path);
        return;
    }
    if (!strncmp(source, "http://", 7) || !strncmp(source, "https://", 8)) {
        const char *host = strstr(source, "://") + 3;
        size_t host_len = strcspn(host, "/?#");
        if (!host_len || host[0] == ':' || host[0] == '@')
            s_add(errors, "%s: URL has no host", path);
        else if (strchr(source, ' '))
            s_add(errors, "%s: URL contains spaces", path);
        return;
    }
    if (!strncmp(source, "s3://", 5)) {
        char bucket[64], key[CF_COMP_MAX_S3_KEY + 1], why[128];
        if (cf_s3_parse_url(source, bucket, sizeof bucket, key, sizeof key, why, sizeof why) < 0)
            s_add(errors, "%s: %s", path, why);
        return;
    }
    if (!strncmp(source, "blob:", 5)) {
        const char *hash = source + 5;
        size_t hash_len = strlen(hash);
        /* What the blob store can hold: a BLAKE2b-256, 64 lower-case hex. */
        bool lower = true;
        for (size_t i = 0; i < hash_len; i++)
            lower = lower && !isupper((unsigned char)hash[i]);
        if (hash_len != 64 || !s_is_hex(hash, hash_len) || !lower)
            s_add(errors, "%s: blob: needs a blob's hash (64 lower-case hex digits)", path);
        return;
    }
    s_add(errors, "%s: unsupported source (use file://, http://, https://, s3:// or blob:)", path);
}

/* Reads an optional time in seconds into *us. Returns 1 when present and
 * valid, 0 when absent, -1 after adding a problem. */
static int s_seconds(json_t *obj, const char *key, const char *prefix, int64_t *us, double *seconds,
                     cf_comp_errors_t *errors)
{
    json_t *value = json_object_get(obj, key);
    if (!value)
        return 0;
    if (!json_is_number(value)) {
        s_add(errors, "%s%s: must be a number of seconds", prefix, key);
        return -1;
    }
    double v = json_number_value(value);
    if (!isfinite(v) || v < 0) {
        s_add(errors, "%s%s: must be >= 0", prefix, key);
        return -1;
    }
    if (v > 24.0 * 3600) {
        s_add(errors, "%s%s: must be at most 86400 seconds", prefix, key);
        return -1;
    }
    *seconds = v;
    *us = llround(v * 1e6);
    return 1;
}

/* ------------------------------------------------------------------ parse */

static void s_parse_clip(json_t *jclip, int index, cf_comp_clip_t *clip, cf_comp_errors_t *errors)
{
    static const char *const known[] = {"source", "start", "end", NULL};
    char prefix[32];
    snprintf(prefix, sizeof prefix, "clips[%d].", index);
    clip->end_us = -1;
    if (!json_is_object(jclip)) {
        s_add(errors, "clips[%d]: must be an object", index);
        return;
    }
    s_unknown_keys(jclip, prefix, known, errors);

    json_t *source = json_object_get(jclip, "source");
    char path[48];
    snprintf(path, sizeof path, "%ssource", prefix);
    if (!source)
        s_add(errors, "%s: is required", path);
    else if (!json_is_string(source))
        s_add(errors, "%s: must be a string", path);
    else {
        s_check_source(json_string_value(source), path, errors);
        clip->source = strdup(json_string_value(source));
        if (!clip->source)
            s_add(errors, "%s: out of memory", path);
    }

    double start = 0, end = 0;
    int have_start = s_seconds(jclip, "start", prefix, &clip->start_us, &start, errors);
    int have_end = s_seconds(jclip, "end", prefix, &clip->end_us, &end, errors);
    if (have_end <= 0) {
        clip->end_us = -1;
        return;
    }
    if (have_start < 0)
        return;
    char buf[32];
    if (clip->end_us <= clip->start_us)
        s_add(errors, "%send: must be greater than start (%s)", prefix,
              s_num(start, buf, sizeof buf));
    else if (clip->end_us - clip->start_us > (int64_t)CF_COMP_MAX_SECONDS * 1000000)
        s_add(errors, "%send: clip is longer than the limit of %d seconds", prefix,
              CF_COMP_MAX_SECONDS);
}

/* Reads an optional integer in [min, max]; returns 1 when set, 0 when
 * absent, -1 after adding a problem. */
static int s_int(json_t *obj, const char *key, const char *prefix, long min, long max, int *out,
                 cf_comp_errors_t *errors)
{
    json_t *value = json_object_get(obj, key);
    if (!value)
        return 0;
    if (!json_is_integer(value)) {
        s_add(errors, "%s%s: must be an integer", prefix, key);
        return -1;
    }
    json_int_t v = json_integer_value(value);
    if (v < min || v > max) {
        s_add(errors, "%s%s: must be between %ld and %ld", prefix, key, min, max);
        return -1;
    }
    *out = (int)v;
    return 1;
}

static void s_parse_output(json_t *out, cf_comp_t *comp, cf_comp_errors_t *errors)
{
    static const char *const known[] = {"width",         "height",  "fps", "container",
                                        "video_codec",   "preset",  "crf", "video_bitrate",
                                        "audio_bitrate", "encoder", NULL};
    if (!out)
        return;
    if (!json_is_object(out)) {
        s_add(errors, "output: must be an object");
        return;
    }
    s_unknown_keys(out, "output.", known, errors);

    if (s_int(out, "width", "output.", CF_COMP_MIN_SIZE, CF_COMP_MAX_WIDTH, &comp->width, errors) >
            0 &&
        comp->width % 2)
        s_add(errors, "output.width: must be even");
    if (s_int(out, "height", "output.", CF_COMP_MIN_SIZE, CF_COMP_MAX_HEIGHT, &comp->height,
              errors) > 0 &&
        comp->height % 2)
        s_add(errors, "output.height: must be even");

    json_t *fps = json_object_get(out, "fps");
    if (fps) {
        int num = 0, den = 1, rc = -1;
        if (json_is_number(fps))
            rc = cf_comp_fps_from_double(json_number_value(fps), &num, &den);
        else if (json_is_string(fps))
            rc = s_fps_from_string(json_string_value(fps), &num, &den);
        if (rc < 0 && !json_is_number(fps))
            s_add(errors, "output.fps: must be a number or a fraction like \"30000/1001\"");
        else if (rc < 0 || num < den || num > (int64_t)CF_COMP_MAX_FPS * den)
            s_add(errors, "output.fps: must be between 1 and %d", CF_COMP_MAX_FPS);
        else {
            comp->fps_num = num;
            comp->fps_den = den;
        }
    }

    json_t *value;
    int idx;
    if ((value = json_object_get(out, "container")) &&
        (idx = s_enum(value, "output.container", s_containers, errors)) >= 0)
        comp->container = (cf_container_t)idx;
    if ((value = json_object_get(out, "video_codec")) &&
        (idx = s_enum(value, "output.video_codec", s_codecs, errors)) >= 0)
        comp->video_codec = (cf_codec_t)idx;
    if ((value = json_object_get(out, "preset")) &&
        (idx = s_enum(value, "output.preset", s_presets, errors)) >= 0)
        comp->preset = (cf_preset_t)idx;
    if ((value = json_object_get(out, "encoder")) &&
        (idx = s_enum(value, "output.encoder", s_encoders, errors)) >= 0)
        comp->encoder = (cf_encoder_t)idx;

    comp->crf = s_preset_defaults[comp->preset].crf;
    comp->audio_bitrate = s_preset_defaults[comp->preset].audio_bitrate;
    comp->faststart = s_preset_defaults[comp->preset].faststart;
    int have_crf = s_int(out, "crf", "output.", 0, 51, &comp->crf, errors);

    if ((value = json_object_get(out, "audio_bitrate"))) {
        int64_t bps = s_bitrate(value);
        if (bps < 0)
            s_add(errors, "output.audio_bitrate: must be a bitrate like \"192k\"");
        else if (bps < 32000 || bps > 512000)
            s_add(errors, "output.audio_bitrate: must be between 32k and 512k");
        else
            comp->audio_bitrate = bps;
    }
    if ((value = json_object_get(out, "video_bitrate"))) {
        int64_t bps = s_bitrate(value);
        if (bps < 0)
            s_add(errors, "output.video_bitrate: must be a bitrate like \"5M\"");
        else if (bps < 100000 || bps > 100000000)
            s_add(errors, "output.video_bitrate: must be between 100k and 100M");
        else if (have_crf > 0)
            s_add(errors, "output.video_bitrate: cannot be combined with crf");
        else
            comp->video_bitrate = bps;
    }
}

/* "destination": {"s3": {"bucket": B, "key": K, "profile": P}}. */
static void s_parse_destination(json_t *dest, cf_comp_t *comp, cf_comp_errors_t *errors)
{
    if (!dest)
        return;
    static const char *const known[] = {"s3", NULL};
    static const char *const known_s3[] = {"bucket", "key", "profile", NULL};
    if (!json_is_object(dest)) {
        s_add(errors, "destination: must be an object");
        return;
    }
    s_unknown_keys(dest, "destination.", known, errors);
    json_t *s3 = json_object_get(dest, "s3");
    if (!json_is_object(s3)) {
        s_add(errors, "destination.s3: is required (an object with bucket and key)");
        return;
    }
    s_unknown_keys(s3, "destination.s3.", known_s3, errors);
    const char *bucket = json_string_value(json_object_get(s3, "bucket"));
    const char *key = json_string_value(json_object_get(s3, "key"));
    json_t *profile = json_object_get(s3, "profile");
    if (!bucket || !cf_s3_bucket_valid(bucket))
        s_add(errors, "destination.s3.bucket: must be a bucket name (3-63 of a-z, 0-9, '.', '-')");
    if (!key || !*key || strlen(key) > CF_COMP_MAX_S3_KEY)
        s_add(errors, "destination.s3.key: must be 1 to %d bytes", CF_COMP_MAX_S3_KEY);
    else if (strpbrk(key, "\r\n"))
        s_add(errors, "destination.s3.key: must not hold line breaks");
    if (profile && (!json_is_string(profile) || !cf_s3_profile_valid(json_string_value(profile))))
        s_add(errors, "destination.s3.profile: must be a profile name (letters, digits, -, _, .)");
    if (bucket && key)
        comp->dest_s3_bucket = strdup(bucket), comp->dest_s3_key = strdup(key);
    if (json_is_string(profile))
        comp->dest_s3_profile = strdup(json_string_value(profile));
    if ((bucket && key && (!comp->dest_s3_bucket || !comp->dest_s3_key)) ||
        (json_is_string(profile) && !comp->dest_s3_profile))
        s_add(errors, "destination: out of memory");
}

static cf_comp_t *s_from_json(json_t *root, cf_comp_errors_t *errors)
{
    static const char *const known[] = {"title",           "priority",    "clips",       "output",
                                        "segment_seconds", "destination", "webhook_url", NULL};
    int before = errors ? errors->count : 0;
    cf_comp_t *comp = calloc(1, sizeof *comp);
    if (!comp) {
        s_add(errors, "composition: out of memory");
        return NULL;
    }
    comp->priority = CF_PRIORITY_DEFAULT;
    comp->width = 1280;
    comp->height = 720;
    comp->fps_num = 30;
    comp->fps_den = 1;
    comp->preset = CF_PRESET_BALANCED;
    comp->segment_seconds = 10;

    if (!json_is_object(root)) {
        s_add(errors, "composition: must be a JSON object");
        cf_comp_destroy(&comp);
        return NULL;
    }
    s_unknown_keys(root, "", known, errors);

    json_t *title = json_object_get(root, "title");
    if (title && !json_is_string(title))
        s_add(errors, "title: must be a string");
    else if (title && strlen(json_string_value(title)) > CF_COMP_MAX_TITLE)
        s_add(errors, "title: longer than %d characters", CF_COMP_MAX_TITLE);
    comp->title = strdup(json_is_string(title) ? json_string_value(title) : "");
    if (!comp->title)
        s_add(errors, "title: out of memory");

    json_t *priority = json_object_get(root, "priority");
    int idx;
    if (priority && (idx = s_enum(priority, "priority", s_priorities, errors)) >= 0)
        comp->priority = (cf_priority_t)idx;

    json_t *clips = json_object_get(root, "clips");
    if (!clips)
        s_add(errors, "clips: is required");
    else if (!json_is_array(clips))
        s_add(errors, "clips: must be an array");
    else if (json_array_size(clips) == 0)
        s_add(errors, "clips: must hold at least one clip");
    else if (json_array_size(clips) > CF_COMP_MAX_CLIPS)
        s_add(errors, "clips: at most %d clips (got %zu)", CF_COMP_MAX_CLIPS,
              json_array_size(clips));
    else {
        comp->clip_count = (int)json_array_size(clips);
        comp->clips = calloc((size_t)comp->clip_count, sizeof *comp->clips);
        if (!comp->clips) {
            comp->clip_count = 0;
            s_add(errors, "clips: out of memory");
        }
        int64_t total_us = 0;
        for (int i = 0; i < comp->clip_count; i++) {
            s_parse_clip(json_array_get(clips, (size_t)i), i, &comp->clips[i], errors);
            int64_t clip_us = comp->clips[i].end_us - comp->clips[i].start_us;
            /* A clip already over the limit is reported on its own. */
            if (clip_us > 0 && clip_us <= (int64_t)CF_COMP_MAX_SECONDS * 1000000)
                total_us += clip_us;
        }
        if (total_us > (int64_t)CF_COMP_MAX_SECONDS * 1000000)
            s_add(errors, "clips: total duration %.1f s exceeds the limit of %d seconds",
                  (double)total_us / 1e6, CF_COMP_MAX_SECONDS);
    }

    s_parse_output(json_object_get(root, "output"), comp, errors);
    if (!json_object_get(root, "output")) {
        comp->crf = s_preset_defaults[comp->preset].crf;
        comp->audio_bitrate = s_preset_defaults[comp->preset].audio_bitrate;
        comp->faststart = s_preset_defaults[comp->preset].faststart;
    }

    json_t *seg = json_object_get(root, "segment_seconds");
    if (seg) {
        if (!json_is_number(seg))
            s_add(errors, "segment_seconds: must be a number");
        else if (!(json_number_value(seg) >= CF_COMP_MIN_SEGMENT_SECS &&
                   json_number_value(seg) <= CF_COMP_MAX_SEGMENT_SECS))
            s_add(errors, "segment_seconds: must be between %d and %d", CF_COMP_MIN_SEGMENT_SECS,
                  CF_COMP_MAX_SEGMENT_SECS);
        else
            comp->segment_seconds = json_number_value(seg);
    }

    s_parse_destination(json_object_get(root, "destination"), comp, errors);
    json_t *hook = json_object_get(root, "webhook_url");
    if (hook) {
        const char *url = json_string_value(hook);
        size_t host_len = url && strstr(url, "://") ? strcspn(strstr(url, "://") + 3, "/?#") : 0;
        if (!url || (strncmp(url, "http://", 7) && strncmp(url, "https://", 8)) || !host_len)
            s_add(errors, "webhook_url: must be an http:// or https:// URL");
        else if (strlen(url) > CF_COMP_MAX_SOURCE)
            s_add(errors, "webhook_url: longer than %d characters", CF_COMP_MAX_SOURCE);
        else if (strpbrk(url, " \t\r\n"))
            s_add(errors, "webhook_url: contains spaces or control characters");
        else if (!(comp->webhook_url = strdup(url)))
            s_add(errors, "webhook_url: out of memory");
    }

    if (!comp->title || (errors && errors->count > before)) {
        if (!comp->title)
            s_add(errors, "composition: out of memory");
        cf_comp_destroy(&comp);
        return NULL;
    }
    for (int i = 0; i < comp->clip_count; i++) {
        if (!comp->clips[i].source) {
            s_add(errors, "composition: out of memory");
            cf_comp_destroy(&comp);
            return NULL;
        }
    }
    return comp;
}

cf_comp_t *cf_comp_parse(const char *text, size_t len, cf_comp_errors_t *errors)
{
    json_error_t jerr;
    json_t *root = cf_json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        s_add(errors, "json: line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    cf_comp_t *comp = s_from_json(root, errors);
    json_decref(root);
    return comp;
}

cf_comp_t *cf_comp_load(const char *path, cf_comp_errors_t *errors)
{
    FILE *file = fopen(path, "rb");
    if (!file) {
        s_add(errors, "%s: cannot read: %s", path, strerror(errno));
        return NULL;
    }
    /* Compositions are small; refuse anything that is not. */
    enum { max_bytes = 4 << 20 };
    char *text = malloc(max_bytes + 1);
    size_t len = text ? fread(text, 1, max_bytes + 1, file) : 0;
    bool read_error = ferror(file);
    fclose(file);
    if (!text || read_error) {
        s_add(errors, "%s: cannot read", path);
        free(text);
        return NULL;
    }
    if (len > max_bytes) {
        s_add(errors, "%s: larger than 4 MiB", path);
        free(text);
        return NULL;
    }
    cf_comp_t *comp = cf_comp_parse(text, len, errors);
    free(text);
    return comp;
}

void cf_comp_destroy(cf_comp_t **comp_p)
{
    if (!comp_p || !*comp_p)
        return;
    cf_comp_t *comp = *comp_p;
    for (int i = 0; i < comp->clip_count; i++)
        free(comp->clips[i].source);
    free(comp->clips);
    free(comp->title);
    free(comp->dest_s3_bucket);
    free(comp->dest_s3_key);
    free(comp->dest_s3_profile);
    free(comp->webhook_url);
    free(comp);
    *comp_p = NULL;
}

char *cf_comp_to_json(const cf_comp_t *comp)
{
    json_t *root = json_object();
    json_t *clips = json_array();
    json_t *out = json_object();
    char *text = NULL;
    if (!root || !clips || !out)
        goto end;
    json_object_set_new(root, "title", json_string(comp->title));
    json_object_set_new(root, "priority", json_string(cf_comp_priority_name(comp->priority)));
    for (int i = 0; i < comp->clip_count; i++) {
        const cf_comp_clip_t *clip = &comp->clips[i];
        json_t *jclip = json_object();
        if (!jclip)
            goto end;
        json_object_set_new(jclip, "source", json_string(clip->source));
        json_object_set_new(jclip, "start", json_real((double)clip->start_us / 1e6));
        if (clip->end_us >= 0)
            json_object_set_new(jclip, "end", json_real((double)clip->end_us / 1e6));
        json_array_append_new(clips, jclip);
    }
    char fps[32];
    snprintf(fps, sizeof fps, "%d/%d", comp->fps_num, comp->fps_den);
    json_object_set_new(out, "width", json_integer(comp->width));
    json_object_set_new(out, "height", json_integer(comp->height));
    json_object_set_new(out, "fps", json_string(fps));
    json_object_set_new(out, "container", json_string(cf_comp_container_name(comp->container)));
    json_object_set_new(out, "video_codec", json_string(cf_comp_codec_name(comp->video_codec)));
    json_object_set_new(out, "preset", json_string(cf_comp_preset_name(comp->preset)));
    if (comp->video_bitrate > 0)
        json_object_set_new(out, "video_bitrate", json_integer(comp->video_bitrate));
    else
        json_object_set_new(out, "crf", json_integer(comp->crf));
    json_object_set_new(out, "audio_bitrate", json_integer(comp->audio_bitrate));
    json_object_set_new(out, "encoder", json_string(cf_comp_encoder_name(comp->encoder)));
    json_object_set(root, "clips", clips);
    json_object_set(root, "output", out);
    json_object_set_new(root, "segment_seconds", json_real(comp->segment_seconds));
    if (comp->dest_s3_bucket) {
        json_t *s3 =
            json_pack("{s:s,s:s}", "bucket", comp->dest_s3_bucket, "key", comp->dest_s3_key);
        if (s3 && comp->dest_s3_profile)
            json_object_set_new(s3, "profile", json_string(comp->dest_s3_profile));
        json_object_set_new(root, "destination", json_pack("{s:o}", "s3", s3));
    }
    if (comp->webhook_url)
        json_object_set_new(root, "webhook_url", json_string(comp->webhook_url));
    text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
end:
    json_decref(clips);
    json_decref(out);
    json_decref(root);
    return text;
}
