# Every REST route and every error status, against real nodes with real
# Postgres, Redis and rendered outputs.
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/apinode.sh"
api_setup
api_media "$API_WORK/a.mp4" 1
comp=$(api_comp_json "$API_WORK/a.mp4" first)

# Node A serves the API only (what is queued stays queued), with a small
# body limit; node B renders, with a small upload limit.
api_node_start a --no-render --max-body-bytes 4096
A=$API_URL
API_KEY=$(api_key tests) || exit 1

# ---------------------------------------------------------------- unauthenticated
api_curl "$A/healthz"
expect_status 200 healthz
api_curl "$A/readyz"
expect_status 200 readyz
[[ $(jq -r .status <<<"$body") == ready ]] || fail "readyz: $body"
saved_key=$API_KEY
API_KEY=""
api_curl "$A/api/v1/compositions"
expect_error 401 unauthorized "no key"
api_curl -H "Authorization: Bearer cf_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" \
    "$A/api/v1/compositions"
expect_error 401 unauthorized "unknown key"
api_curl -H "Authorization: Bearer ${saved_key%?}X" "$A/api/v1/compositions"
expect_error 401 unauthorized "wrong secret"
api_curl -H "Authorization: Basic dXNlcjpwYXNz" "$A/api/v1/compositions"
expect_error 401 unauthorized "not a bearer credential"
API_KEY=$saved_key

# ---------------------------------------------------------------- routing errors
api_curl "$A/api/v1/nothing-here"
expect_error 404 no_route "unknown path"
api_curl -X PUT "$A/api/v1/compositions"
expect_error 405 method_not_allowed "PUT on compositions"
grep -qi '^Allow: GET, POST$\|^Allow: POST, GET$' <<<"$headers" || fail "405 without Allow: $headers"
api_curl -X POST "$A/healthz"
expect_error 405 method_not_allowed "POST on healthz"

# ---------------------------------------------------------------- create
api_curl -X POST -H 'Content-Type: application/json' -d "$comp" "$A/api/v1/compositions"
expect_status 202 create
id1=$(jq -r .id <<<"$body")
[[ $(jq -r .status <<<"$body") == queued ]] || fail "new composition not queued: $body"
grep -q "^Location: /api/v1/compositions/$id1$" <<<"$headers" || fail "no Location: $headers"

# Malformed JSON: 400 with line and column.
api_curl -X POST -H 'Content-Type: application/json' --data-binary $'{"title": "x",\n  "clips": [}' \
    "$A/api/v1/compositions"
expect_error 400 malformed_json "malformed JSON"
[[ $(jq .error.line <<<"$body") == 2 && $(jq .error.column <<<"$body") == 13 ]] \
    || fail "malformed JSON position: $body"
[[ $(jq -r .error.message <<<"$body") == *"line 2, column 13"* ]] || fail "position not in message: $body"
# Wrong content type: 415.
api_curl -X POST -H 'Content-Type: text/plain' -d "$comp" "$A/api/v1/compositions"
expect_error 415 unsupported_media_type "text/plain body"
# Oversized body (node A takes at most 4096 bytes): 413.
big=$(printf '{"title":"%s","clips":[]}' "$(head -c 5000 /dev/zero | tr '\0' x)")
api_curl -X POST -H 'Content-Type: application/json' -d "$big" "$A/api/v1/compositions"
expect_error 413 too_large "oversized body"
# Invalid composition: 422 listing every problem.
api_curl -X POST -H 'Content-Type: application/json' \
    -d '{"clips":[{"source":"file:///x.mp4","start":5,"end":2},{"source":7}],"output":{"width":3}}' \
    "$A/api/v1/compositions"
expect_error 422 invalid_composition "invalid composition"
jq -e '.error.problems | length == 3' <<<"$body" >/dev/null || fail "not every problem listed: $body"
jq -e '[.error.problems[].field] == ["clips[0].end","clips[1].source","output.width"]' <<<"$body" \
    >/dev/null || fail "problem fields: $body"
[[ $(jq -r .error.field <<<"$body") == "clips[0].end" ]] || fail "first field: $body"

# Idempotency-Key: same key and body -> same composition; other body -> 409.
api_curl -X POST -H 'Content-Type: application/json' -H 'Idempotency-Key: order-17' -d "$comp" \
    "$A/api/v1/compositions"
expect_status 202 "idempotent create"
id2=$(jq -r .id <<<"$body")
api_curl -X POST -H 'Content-Type: application/json' -H 'Idempotency-Key: order-17' -d "$comp" \
    "$A/api/v1/compositions"
expect_status 202 "idempotent replay"
[[ $(jq -r .id <<<"$body") == "$id2" ]] || fail "replay made a new composition: $body"
grep -qi '^Idempotent-Replayed: true' <<<"$headers" || fail "replay not marked: $headers"
api_curl -X POST -H 'Content-Type: application/json' -H 'Idempotency-Key: order-17' \
    -d "$(api_comp_json "$API_WORK/a.mp4" other)" "$A/api/v1/compositions"
expect_error 409 idempotency_conflict "same key, other body"
api_curl -X POST -H 'Content-Type: application/json' -d "$(api_comp_json "$API_WORK/a.mp4" third)" \
    "$A/api/v1/compositions"
id3=$(jq -r .id <<<"$body")

# ---------------------------------------------------------------- read
api_curl "$A/api/v1/compositions/$id1"
expect_status 200 get
[[ $(jq -r .id <<<"$body") == "$id1" && $(jq -r .title <<<"$body") == first ]] || fail "get: $body"
# Ids are UUIDs in any case: an upper-case id reads the same composition,
# answered exactly as the lower-case one (node A renders nothing: once its
# coordinator said so, the composition stays queued, waiting for a node that
# can encode it, between the two reads).
for ((i = 0; i < 100; i++)); do
    [[ $(jq -r '.waiting // empty' <<<"$body") == "waiting for a node with libx264" ]] && break
    sleep 0.1
    api_curl "$A/api/v1/compositions/$id1"
done
[[ $(jq -r .status <<<"$body") == queued && $(jq -r .waiting <<<"$body") == "waiting for a node with libx264" ]] ||
    fail "with no node that renders, the composition does not wait queued with its reason: $body"
lower_body=$body
upper1=$(tr a-f A-F <<<"$id1")
[[ $upper1 != "$id1" ]] || fail "test id has no letters: $id1"
api_curl "$A/api/v1/compositions/$upper1"
expect_status 200 "get by upper-case id"
[[ $body == "$lower_body" ]] || fail "upper-case id answers differently: $body vs $lower_body"
api_curl "$A/api/v1/compositions/$(tr a-f A-F <<<"${id1:0:18}")${id1:18}/segments"
expect_status 200 "segments by mixed-case id"
[[ $(jq -r .composition_id <<<"$body") == "$id1" ]] || fail "segments name another spelling: $body"
api_curl "$A/api/v1/compositions/00000000-0000-4000-8000-00000000000A"
expect_error 404 not_found "unknown upper-case id"
[[ $(jq -r .error.message <<<"$body") == *00000000-0000-4000-8000-00000000000a* ]] \
    || fail "unknown id not named canonically: $body"
api_curl "$A/api/v1/compositions/00000000-0000-4000-8000-000000000000"
expect_error 404 not_found "unknown id"
api_curl "$A/api/v1/compositions/not-a-uuid"
expect_error 404 not_found "malformed id"
api_curl "$A/api/v1/compositions/$id1/segments"
expect_status 200 "segments before rendering"
jq -e '.items == []' <<<"$body" >/dev/null || fail "segments of a queued composition: $body"
api_curl "$A/api/v1/compositions/00000000-0000-4000-8000-000000000000/segments"
expect_error 404 not_found "segments of unknown id"
api_curl "$A/api/v1/compositions/$id1/output"
expect_error 409 not_ready "output before rendering"

# List: newest first, limit, cursor, status filter, fields.
api_curl "$A/api/v1/compositions?limit=2"
expect_status 200 list
jq -e --arg a "$id3" --arg b "$id2" '[.items[].id] == [$a, $b]' <<<"$body" >/dev/null \
    || fail "page 1 not newest first: $body"
cursor=$(jq -r .next_cursor <<<"$body")
[[ $cursor != null ]] || fail "no next_cursor: $body"
api_curl -G --data-urlencode "cursor=$cursor" --data-urlencode limit=2 "$A/api/v1/compositions"
expect_status 200 "list page 2"
jq -e --arg a "$id1" '[.items[].id] == [$a] and .next_cursor == null' <<<"$body" >/dev/null \
    || fail "page 2: $body"
api_curl "$A/api/v1/compositions?fields=id,status"
jq -e '.items[0] | keys == ["id","status"]' <<<"$body" >/dev/null || fail "fields: $body"
api_curl "$A/api/v1/compositions?status=completed"
jq -e '.items == []' <<<"$body" >/dev/null || fail "status filter: $body"
api_curl "$A/api/v1/compositions?cursor=garbage"
expect_error 400 invalid_cursor "bad cursor"
[[ $(jq -r .error.field <<<"$body") == cursor ]] || fail "bad cursor field: $body"
api_curl "$A/api/v1/compositions?limit=101"
expect_error 400 invalid_argument "limit over 100"
api_curl "$A/api/v1/compositions?status=lost"
expect_error 400 invalid_argument "unknown status"
api_curl "$A/api/v1/compositions?fields=id,password"
expect_error 400 invalid_argument "unknown field"

# ---------------------------------------------------------------- cancel
# Read by upper-case id first: the entry that read leaves in the node's
# caches must be the one the cancel drops, or the next read is stale.
upper3=$(tr a-f A-F <<<"$id3")
api_curl "$A/api/v1/compositions/$upper3"
[[ $status == 200 && $(jq -r .status <<<"$body") == queued ]] || fail "upper-case read: $body"
api_curl -X DELETE "$A/api/v1/compositions/$id3"
expect_status 200 "cancel queued"
[[ $(jq -r .status <<<"$body") == cancelled ]] || fail "cancel: $body"
api_curl "$A/api/v1/compositions/$upper3"
[[ $status == 200 && $(jq -r .status <<<"$body") == cancelled ]] \
    || fail "upper-case id reads a stale composition after cancel: $status $body"
api_curl -X DELETE "$A/api/v1/compositions/$upper3"
expect_error 409 already_terminal "cancel twice (upper-case id)"
api_curl -X DELETE "$A/api/v1/compositions/$id3"
expect_error 409 already_terminal "cancel twice"
api_curl -X DELETE "$A/api/v1/compositions/00000000-0000-4000-8000-000000000000"
expect_error 404 not_found "cancel unknown"

# ---------------------------------------------------------------- render on node B
api_node_start b --max-upload-bytes 200000
B=$API_URL
[[ $(api_wait_terminal "$id1") == completed ]] || fail "first composition: $body"
[[ $(api_wait_terminal "$id2") == completed ]] || fail "second composition: $body"
api_curl "$A/api/v1/compositions/$id2"
jq -e '.output.size_bytes > 0 and (.output.hash | length) == 64 and .progress == 1' <<<"$body" \
    >/dev/null || fail "completed composition: $body"
api_curl -X DELETE "$A/api/v1/compositions/$id1"
expect_error 409 already_terminal "cancel completed"

api_curl "$A/api/v1/compositions/$id1/segments"
expect_status 200 segments
# The work list: its one segment, the timeline's audio and the assembly,
# each done by a node.
jq -e '(.items | map(.kind)) == ["segment", "audio", "assemble"]
    and all(.items[]; .status == "done" and .node_id != null and (.blob_hash | length) == 64)' \
    <<<"$body" >/dev/null || fail "segments after rendering: $body"

# Output, from the node that rendered it: whole file, exact range,
# unsatisfiable range, conditional.
out=$API_WORK/out.mp4
curl -sf -H "Authorization: Bearer $API_KEY" -D "$API_WORK/h" -o "$out" "$B/api/v1/compositions/$id1/output" \
    || fail "download"
size=$(stat -c %s "$out")
[[ $size == $(jq .output.size_bytes <<<"$(curl -s -H "Authorization: Bearer $API_KEY" "$A/api/v1/compositions/$id1")") ]] \
    || fail "size differs from the recorded size"
tr -d '\r' <"$API_WORK/h" >"$API_WORK/h2"
grep -qi "^Content-Length: $size$" "$API_WORK/h2" || fail "Content-Length: $(cat "$API_WORK/h2")"
grep -qi '^Content-Disposition: attachment; filename="first.mp4"$' "$API_WORK/h2" \
    || fail "Content-Disposition: $(cat "$API_WORK/h2")"
grep -qi '^Accept-Ranges: bytes$' "$API_WORK/h2" || fail "Accept-Ranges missing"
etag=$(grep -i '^ETag:' "$API_WORK/h2" | cut -d' ' -f2)
[[ -n $etag ]] || fail "no ETag"
ffprobe -v error -count_frames -select_streams v -show_entries stream=nb_read_frames -of csv=p=0 "$out" \
    | grep -qx 25 || fail "output is not the 25-frame render"
curl -sf -H "Authorization: Bearer $API_KEY" -H 'Range: bytes=100-1099' -o "$API_WORK/range" \
    -w '%{http_code}' "$B/api/v1/compositions/$id1/output" | grep -qx 206 || fail "range status"
cmp "$API_WORK/range" <(tail -c +101 "$out" | head -c 1000) || fail "range bytes differ"
api_curl -H 'Range: bytes=999999999-' "$B/api/v1/compositions/$id1/output"
expect_error 416 range_not_satisfiable "range past the end"
grep -qi "^Content-Range: bytes \*/$size$" <<<"$headers" || fail "416 Content-Range: $headers"
api_curl -H "If-None-Match: $etag" "$B/api/v1/compositions/$id1/output"
expect_status 304 "If-None-Match"
# If-Range: the range only while the ETag still matches; otherwise the
# whole file (RFC 9110 13.1.5), byte for byte.
code=$(curl -s -H "Authorization: Bearer $API_KEY" -H 'Range: bytes=100-199' -H "If-Range: $etag" \
    -o "$API_WORK/ifrange" -w '%{http_code}' "$B/api/v1/compositions/$id1/output")
[[ $code == 206 ]] || fail "If-Range with the current ETag: HTTP $code"
cmp "$API_WORK/ifrange" <(tail -c +101 "$out" | head -c 100) || fail "If-Range range bytes differ"
code=$(curl -s -H "Authorization: Bearer $API_KEY" -H 'Range: bytes=100-199' -H 'If-Range: "stale"' \
    -o "$API_WORK/ifrange" -w '%{http_code}' "$B/api/v1/compositions/$id1/output")
[[ $code == 200 ]] || fail "If-Range with another ETag: HTTP $code, expected the whole file"
cmp "$API_WORK/ifrange" "$out" || fail "If-Range with another ETag: not the whole file"
# From node A, which does not hold the file: fetched from node B (once A
# has discovered B through the registry; until then A says 503).
for ((i = 0; i < 100; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $API_KEY" \
        "$A/api/v1/compositions/$id1/output")
    [[ $code == 503 ]] || break
    sleep 0.1
done
curl -sf -H "Authorization: Bearer $API_KEY" -o "$API_WORK/via-a" "$A/api/v1/compositions/$id1/output" \
    || fail "download through the other node: $(api_node_log a | tail -3)"
cmp "$API_WORK/via-a" "$out" || fail "output through the other node differs"
curl -sf -H "Authorization: Bearer $API_KEY" -H 'Range: bytes=-500' -o "$API_WORK/tail-a" \
    "$A/api/v1/compositions/$id1/output" || fail "range through the other node"
cmp "$API_WORK/tail-a" <(tail -c 500 "$out") || fail "suffix range through the other node differs"
# The caller's key stays on node A: B takes A's peer credential (derived from
# the cluster secret) and never looks the key up, even once its own cache of
# the key has lapsed (auth cache 1 s).
lookups() { curl -s "$B/metrics" | awk '/^auth_db_lookups_total /{print $2; found=1} END{if (!found) print 0}'; }
sleep 1.2
before=$(lookups)
curl -sf -H "Authorization: Bearer $API_KEY" -o "$API_WORK/via-a2" "$A/api/v1/compositions/$id1/output" \
    || fail "download through the other node (peer credential): $(api_node_log b | tail -3)"
cmp "$API_WORK/via-a2" "$out" || fail "output through the other node differs (peer credential)"
[[ $(lookups) == "$before" ]] || fail "node B looked up the caller's key: A forwarded it"
api_curl -H 'X-Clipfarm-Peer-Auth: v1 1 0000' -H 'X-Clipfarm-Proxied: 1' "$B/api/v1/compositions/$id1/output"
expect_error 401 unauthorized "forged peer credential"

# Events: a Server-Sent Events stream that ends after the terminal status.
events=$(curl -s -N --max-time 20 -H "Authorization: Bearer $API_KEY" "$A/api/v1/compositions/$id1/events")
grep -q '^event: status$' <<<"$events" || fail "no status events: $events"
grep -q '"to":"completed"' <<<"$events" || fail "no completion event: $events"
[[ $(tail -n 2 <<<"$events" | head -n 1) == "event: end" ]] || fail "stream did not end: $events"
last_id=$(grep '^id: ' <<<"$events" | tail -n 1 | cut -d' ' -f2)
resumed=$(curl -s -N --max-time 20 -H "Authorization: Bearer $API_KEY" -H "Last-Event-ID: $((last_id - 1))" \
    "$A/api/v1/compositions/$id1/events")
[[ $(grep -c '^id: ' <<<"$resumed") == 1 ]] || fail "Last-Event-ID did not resume: $resumed"

# Cancelling a composition while it renders stops the render within 2 s
# (the worker looks for a cancel every second): judged by the files on disk,
# not by the node's word. Mid-render the workspace and the .part output
# exist; once stopped neither does, and no output appears.
api_media "$API_WORK/long.mp4" 10
api_curl -X POST -H 'Content-Type: application/json' \
    -d "{\"title\":\"long\",\"clips\":[{\"source\":\"file://$API_WORK/long.mp4\"}],\"output\":{\"width\":1280,\"height\":720,\"fps\":30,\"preset\":\"high\"}}" \
    "$B/api/v1/compositions"
expect_status 202 "long composition"
long=$(jq -r .id <<<"$body")
outputs=$API_WORK/b/data/outputs
# A render's files: its workspaces (sources, scratch; the encoded pieces)
# and anything on its way into the blob store.
# With the cluster rendering: the tasks' scratch (DATA/work) on every node.
leftovers() {
    {
        find "$outputs" -mindepth 1 -maxdepth 1 \( -name 'clipfarm-render.*' -o -name 'clipfarm-pieces.*' -o -name '*.part*' \)
        find "$API_WORK/b/data/blobs/tmp" -mindepth 1 -maxdepth 1 -name 'render-*'
        find "$API_WORK/a/data/work" "$API_WORK/b/data/work" -mindepth 1 -maxdepth 1
    } 2>/dev/null | sort
}
for ((i = 0; i < 300; i++)); do
    api_curl "$B/api/v1/compositions/$long"
    [[ $(jq -r .stage <<<"$body") == encoding && -n $(leftovers) ]] && break
    sleep 0.1
done
[[ $(jq -r .stage <<<"$body") == encoding ]] || fail "long composition never encoding: $body"
[[ -n $(leftovers) ]] || fail "no workspace mid-render"
# B's finished tasks just before the cancel: a task whose encode ended as
# the cancel came counts as done there, yet its segment is closed cancelled
# (its DONE reached the coordinator after the cancel).
b_done() { api_curl "$B/metrics"; sed -n 's/^segments_total{status="done"} //p' <<<"$body"; }
done_before=$(b_done)
api_curl -X DELETE "$A/api/v1/compositions/$long"
cancelled_at=$(date +%s%N)
expect_status 200 "cancel while rendering"
[[ $(jq -r .status <<<"$body") == cancelled ]] || fail "cancel while rendering: $body"
while [[ -n $(leftovers) ]] && (($(date +%s%N) - cancelled_at < 2000000000)); do sleep 0.05; done
[[ -z $(leftovers) ]] || fail "2 s after the cancel the render still has files: $(leftovers)"
echo "render stopped $((($(date +%s%N) - cancelled_at) / 1000000)) ms after the cancel"
# Stopped for good: nothing comes back, no output ever appears.
sleep 1
[[ -z $(leftovers) ]] || fail "files after the cancel: $(leftovers)"
api_curl "$B/api/v1/compositions/$long"
[[ $(jq -r '.output // empty' <<<"$body") == "" ]] || fail "a cancelled composition has an output: $body"
# Every task that was running on B when the cancel came (started, then
# closed as cancelled) is counted as a cancelled render there: usually one;
# none when the cancel fell between two of its tasks.
api_curl "$B/api/v1/compositions/$long/segments"
segs=$body
b_node=$(jq -r '[.items[] | select(.started_at != null) | .node_id] | first // empty' <<<"$segs")
was_running=$(jq -r --arg n "$b_node" '[.items[] | select(.error == "cancelled" and .started_at != null and .node_id == $n)] | length' <<<"$segs")
# (an assigned task whose ACCEPT was still on its way also ran)
just_sent=$(jq -r --arg n "$b_node" '[.items[] | select(.error == "cancelled" and .started_at == null and .assigned_at != null and .node_id == $n)] | length' <<<"$segs")
# The count lands when the task's thread has reaped its child: a moment
# after its files are gone (seconds under the sanitizers).
for ((i = 0; i < 150; i++)); do
    api_curl "$B/metrics"
    counted=$(sed -n 's/^renders_total{result="cancelled"} //p' <<<"$body")
    done_after=$(sed -n 's/^segments_total{status="done"} //p' <<<"$body")
    late_done=$((${done_after:-0} - ${done_before:-0}))
    ((${counted:-0} + late_done >= was_running)) && break
    sleep 0.1
done
((${counted:-0} + late_done >= was_running && ${counted:-0} <= was_running + just_sent)) ||
    fail "cancelled tasks counted ${counted:-0}, $was_running were running ($just_sent just sent, $late_done ended done as the cancel came)"

# ---------------------------------------------------------------- media
api_curl -X POST -H 'Content-Type: video/mp4' --data-binary "@$API_WORK/a.mp4" "$B/api/v1/media"
expect_status 201 upload
ref=$(jq -r .ref <<<"$body")
[[ $ref == blob:$(b2sum -l 256 "$API_WORK/a.mp4" | cut -d' ' -f1) ]] || fail "blob ref is not the BLAKE2b: $body"
api_curl -X POST -H 'Content-Type: application/json' \
    -d "{\"title\":\"from-blob\",\"clips\":[{\"source\":\"$ref\"}],\"output\":{\"width\":160,\"height\":90,\"fps\":25,\"preset\":\"fast\"}}" \
    "$B/api/v1/compositions"
expect_status 202 "composition from a blob"
[[ $(api_wait_terminal "$(jq -r .id <<<"$body")") == completed ]] || fail "blob source: $body"
head -c 300000 /dev/urandom >"$API_WORK/big.bin"
api_curl -X POST -H 'Content-Type: application/octet-stream' --data-binary "@$API_WORK/big.bin" "$B/api/v1/media"
expect_error 413 too_large "upload over the limit"
api_curl -X POST -H 'Content-Type: application/octet-stream' -H 'Transfer-Encoding: chunked' \
    --data-binary "@$API_WORK/big.bin" "$B/api/v1/media"
expect_error 413 too_large "chunked upload over the limit"
api_curl -X POST -H 'Content-Type: application/json' -d '{}' "$B/api/v1/media"
expect_error 415 unsupported_media_type "upload of JSON"
[[ -z $(ls "$API_WORK/b/data/blobs/tmp") ]] || fail "refused uploads left temporary files"

# ---------------------------------------------------------------- cluster, metrics
api_curl "$A/api/v1/cluster"
expect_status 200 cluster
jq -e '(.nodes | length) == 2 and (.queue_depth | has("high") and has("default") and has("low")) and has("epoch") and has("coordinator")' \
    <<<"$body" >/dev/null || fail "cluster: $body"
api_curl "$B/metrics"
expect_status 200 metrics
grep -q '^Content-Type: text/plain; version=0.0.4' <<<"$headers" || fail "metrics content type: $headers"
for want in 'http_requests_total{method="GET",route="/api/v1/compositions/{id}",status="200"}' \
    'http_request_duration_seconds_bucket{' 'compositions_total{status="completed"}' \
    'segments_total{status="done"}' 'segment_encode_seconds_bucket{' 'queue_depth{priority="high"}' \
    'active_segments ' 'node_encode_fps{encoder="libx264"} ' '# TYPE cluster_beacons_rejected_total counter' \
    '# TYPE cluster_messages_rejected_total counter' 'source_cache_hits_total ' \
    'source_cache_misses_total ' '# TYPE source_cache_evictions_total counter' \
    'source_cache_bytes '; do
    grep -qF "$want" <<<"$body" || fail "metrics lack $want"
done
[[ -d $API_WORK/b/data/cache/sources ]] || fail "no source cache in the data dir"

# ---------------------------------------------------------------- revoked key, rate limit
"$CF_BIN" apikey revoke "$API_KEY" --database-url "$API_DB" >/dev/null || fail "revoke"
for ((i = 0; i < 40; i++)); do
    api_curl "$A/api/v1/compositions"
    [[ $status == 403 ]] && break
    sleep 0.1
done
expect_error 403 key_revoked "revoked key"

api_node_start c --no-render --rate-limit 1 --rate-burst 3
API_KEY=$(api_key limited) || exit 1
for i in 1 2 3; do
    api_curl "$API_URL/api/v1/compositions"
    expect_status 200 "request $i within the burst"
done
api_curl "$API_URL/api/v1/compositions"
expect_error 429 rate_limited "over the rate limit"
retry=$(grep -i '^Retry-After:' <<<"$headers" | cut -d' ' -f2)
[[ $retry =~ ^[0-9]+$ && $retry -ge 1 ]] || fail "429 without Retry-After: $headers"
api_curl "$API_URL/healthz"
expect_status 200 "healthz is not rate-limited"
sleep "$retry"
api_curl "$API_URL/api/v1/compositions"
expect_status 200 "after Retry-After"
echo "api_routes: ok"
