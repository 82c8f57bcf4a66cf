# README claims of the REST API, each judged outside the code under test:
#   - one token bucket per key shared by every node (two nodes, one Redis
#     prefix: together they let exactly the burst through; Redis holds one
#     bucket for the key);
#   - Server-Sent Events carry progress and frames (frames counted against
#     ffprobe's count of the output).
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/apinode.sh"
api_setup
redis_host_port=${CF_TEST_REDIS_URL#redis://}
redis_host_port=${redis_host_port%%/*}
rcli() { redis-cli -h "${redis_host_port%:*}" -p "${redis_host_port##*:}" -n "${CF_TEST_REDIS_URL##*/}" "$@"; }

# ---------------------------------------------------------------- shared bucket
# A burst of 4 that refills once every 100 s: 8 requests alternating
# between the two nodes get exactly 4 answers, the rest 429.
api_node_start x --no-render --rate-limit 0.01 --rate-burst 4
X=$API_URL
api_node_start y --no-render --rate-limit 0.01 --rate-burst 4
Y=$API_URL
API_KEY=$(api_key shared) || exit 1
ok=0 limited=0
for i in 1 2 3 4 5 6 7 8; do
    ((i % 2)) && url=$X || url=$Y
    api_curl "$url/api/v1/compositions?limit=1"
    case $status in
        200) ok=$((ok + 1)) ;;
        429) limited=$((limited + 1)) ;;
        *) fail "request $i: HTTP $status: $body" ;;
    esac
done
((ok == 4 && limited == 4)) || fail "two nodes let $ok of 8 requests through, the burst is 4"
buckets=$(rcli --scan --pattern "${API_PREFIX}rl:key:*" | wc -l)
[[ $buckets == 1 ]] || fail "$buckets buckets in Redis for one key"
api_node_stop x
api_node_stop y

# ---------------------------------------------------------------- SSE progress and frames
api_node_start r
API_KEY=$(api_key events) || exit 1
api_media "$API_WORK/three.mp4" 3
api_curl -X POST -H 'Content-Type: application/json' \
    -d "{\"title\":\"events\",\"clips\":[{\"source\":\"file://$API_WORK/three.mp4\"}],\"output\":{\"width\":640,\"height\":360,\"fps\":25,\"preset\":\"high\"}}" \
    "$API_URL/api/v1/compositions"
expect_status 202 create
id=$(jq -r .id <<<"$body")
[[ $(api_wait_terminal "$id") == completed ]] || fail "composition did not complete"
curl -sf -H "Authorization: Bearer $API_KEY" -o "$API_WORK/out.mp4" "$API_URL/api/v1/compositions/$id/output" \
    || fail "download"
frames=$(ffprobe -v error -count_frames -select_streams v -show_entries stream=nb_read_frames \
    -of csv=p=0 "$API_WORK/out.mp4")
[[ $frames == 75 ]] || fail "output has $frames frames, expected 75"
events=$(curl -s -N --max-time 20 -H "Authorization: Bearer $API_KEY" "$API_URL/api/v1/compositions/$id/events")
data_of() { awk -v t="$1" '$0 == "event: " t { getline; sub(/^data: /, ""); print }' <<<"$events"; }
progress=$(data_of progress | jq -cs 'map(.payload.progress)')
framelist=$(data_of frames | jq -cs 'map(.payload)')
jq -e 'length >= 1' <<<"$progress" >/dev/null || fail "no progress events: $events"
jq -e 'length >= 1' <<<"$framelist" >/dev/null || fail "no frames events: $events"
# Frames: every total is the output's frame count, done never goes back
# and never past it.
jq -e --argjson n "$frames" 'all(.[]; .total == $n and .done >= 0 and .done <= $n)
    and ([.[].done] == ([.[].done] | sort))' <<<"$framelist" >/dev/null \
    || fail "frames events do not count the output's $frames frames: $framelist"
jq -e 'all(.[]; type == "number" and . >= 0 and . <= 1) and (. == sort)' <<<"$progress" >/dev/null \
    || fail "progress events are not a rising fraction: $progress"
echo "api_claims: ok ($(jq length <<<"$framelist") frames events, $(jq length <<<"$progress") progress events)"
