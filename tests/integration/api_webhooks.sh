# Signed completion webhooks against a real node (real Postgres and Redis)
# and a loopback receiver: a receiver that fails twice then succeeds (three
# attempts recorded, one success, the signature checked here with the key's
# secret by Python's hmac), one that never answers (attempts stop at the
# configured bound), a node restarted between attempts (still delivered),
# a cancel (notified too), and the address rules for webhook URLs.
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/apinode.sh"
api_setup
api_media "$API_WORK/a.mp4" 1

declare -a PIDS=()
trap 'rc=$?; kill "${PIDS[@]}" 2>/dev/null; (exit $rc); api_cleanup' EXIT
mkdir -p "$API_WORK/hooks"
python3 "$CF_TESTS_DIR/lib/webhook_receiver.py" "$API_WORK/hooks" "$API_WORK/hooks.port" &
PIDS+=($!)
for ((i = 0; i < 100; i++)); do [[ -s $API_WORK/hooks.port ]] && break; sleep 0.05; done
HOOKS=http://127.0.0.1:$(cat "$API_WORK/hooks.port")

"$CF_BIN" apikey create hooks --json --database-url "$API_DB" --cluster-secret-file "$API_SECRET" \
    >"$API_WORK/key.json" 2>/dev/null || fail "apikey create --json"
API_KEY=$(jq -r .key "$API_WORK/key.json")
SECRET=$(jq -r .webhook_secret "$API_WORK/key.json")
[[ $SECRET == whsec_* && ${#SECRET} == 70 ]] || fail "no webhook secret: $(cat "$API_WORK/key.json")"
"$CF_BIN" apikey create plain --database-url "$API_DB" --cluster-secret-file "$API_SECRET" \
    >/dev/null 2>"$API_WORK/plain.err" || fail "apikey create"
grep -q 'Webhook secret (verifies Clipfarm-Signature): whsec_' "$API_WORK/plain.err" \
    || fail "plain output does not show the webhook secret: $(cat "$API_WORK/plain.err")"

node_flags=(--allow-webhook-net 127.0.0.1/32 --webhook-retry-base-ms 300 --webhook-timeout-ms 1000
    --webhook-max-age-s 4)
api_node_start main "${node_flags[@]}"

submit() { # submit WEBHOOK_URL [EXTRA_JQ]
    api_curl -X POST -H 'Content-Type: application/json' \
        -d "$(jq -cn --arg h "$1" --arg s "file://$API_WORK/a.mp4" \
            '{title:"hook",clips:[{source:$s}],output:{width:160,height:90,fps:25,preset:"fast"},webhook_url:$h}')" \
        "$API_URL/api/v1/compositions"
}
# webhook_events ID: the composition's "webhook" events as a JSON array.
webhook_events() {
    psql "$API_DB" -qAtX -c "SELECT coalesce(json_agg(payload ORDER BY id), '[]') FROM events
        WHERE composition_id = '$1' AND type = 'webhook'"
}
wait_events() { # wait_events ID JQ_CONDITION SECONDS
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        webhook_events "$1" | jq -e "$2" >/dev/null && return 0
        sleep 0.1
    done
    fail "webhook events of $1 never satisfied $2: $(webhook_events "$1")"
}
verify() { # verify NAME N: the Nth request for NAME carries a valid signature
    python3 - "$SECRET" "$API_WORK/hooks/$1.$2.json" "$API_WORK/hooks/$1.$2.sig" <<'PY' \
        || fail "signature of $1 request $2 does not verify"
import hashlib, hmac, sys, time
secret, body_path, sig_path = sys.argv[1:4]
body = open(body_path, "rb").read()
fields = dict(p.split("=", 1) for p in open(sig_path).read().strip().split(","))
t = fields["t"]
mac = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
assert hmac.compare_digest(mac, fields["v1"]), "bad MAC"
assert abs(time.time() - int(t)) < 300, "stale timestamp"
PY
}

# ---------------------------------------------------------------- fails twice
submit "$HOOKS/fail/2/twice"
expect_status 202 "composition with a webhook"
twice=$(jq -r .id <<<"$body")
[[ $(api_wait_terminal "$twice") == completed ]] || fail "render did not complete"
wait_events "$twice" 'length == 3 and .[2].delivered' 20
events=$(webhook_events "$twice")
jq -e '[.[].attempt] == [1,2,3] and [.[].status_code] == [500,500,200]
       and ([.[] | select(.delivered)] | length) == 1 and all(.[]; has("duration_ms"))' \
    <<<"$events" >/dev/null || fail "attempts not recorded as expected: $events"
for n in 1 2 3; do verify twice $n; done
cmp -s "$API_WORK/hooks/twice.1.json" "$API_WORK/hooks/twice.3.json" || fail "the body changed between attempts"
jq -e --arg id "$twice" '.id == $id and .status == "completed" and .event == "composition.completed"
    and (.output.location | startswith("clipfarm://")) and .output.size_bytes > 0 and .finished_at != null' \
    "$API_WORK/hooks/twice.3.json" >/dev/null || fail "webhook body: $(cat "$API_WORK/hooks/twice.3.json")"
# A forged body does not verify with the same signature.
printf '{"id":"%s","status":"failed"}' "$twice" >"$API_WORK/hooks/forged.1.json"
cp "$API_WORK/hooks/twice.3.sig" "$API_WORK/hooks/forged.1.sig"
(verify forged 1) 2>/dev/null && fail "a forged body verified"
sleep 1
[[ ! -e $API_WORK/hooks/twice.4.json ]] || fail "delivered again after a success"

# ---------------------------------------------------------------- never answers
submit "$HOOKS/hang/silent"
silent=$(jq -r .id <<<"$body")
[[ $(api_wait_terminal "$silent") == completed ]] || fail "render did not complete"
wait_events "$silent" 'any(.[]; .abandoned == true)' 20
events=$(webhook_events "$silent")
tries=$(jq '[.[] | select(.attempt and (.abandoned | not))] | length' <<<"$events")
((tries >= 2)) || fail "the silent receiver got $tries attempt(s) before giving up: $events"
jq -e '[.[] | select(.delivered)] | length == 0' <<<"$events" >/dev/null || fail "silent delivered?"
jq -e '[.[] | select(.error)][0].error | test("no answer")' <<<"$events" >/dev/null \
    || fail "timeouts are not named: $events"
count=$(ls "$API_WORK/hooks"/silent.*.json | wc -l)
sleep 1.5
[[ $(ls "$API_WORK/hooks"/silent.*.json | wc -l) == "$count" ]] || fail "attempts went on after giving up"

# ---------------------------------------------------------------- restart
# The first attempt fails; the node stops before the retry (backoff 3 s);
# a new node start delivers what Postgres still holds.
api_node_stop main
api_node_start main --allow-webhook-net 127.0.0.1/32 --webhook-retry-base-ms 3000 \
    --webhook-timeout-ms 1000
submit "$HOOKS/fail/1/restart"
restart=$(jq -r .id <<<"$body")
[[ $(api_wait_terminal "$restart") == completed ]] || fail "render did not complete"
wait_events "$restart" 'length >= 1' 10
api_node_stop main
[[ ! -e $API_WORK/hooks/restart.2.json ]] || fail "retried before the restart: backoff too short for this test"
pending=$(psql "$API_DB" -qAtX -c "SELECT count(*) FROM webhook_deliveries
    WHERE composition_id = '$restart' AND delivered_at IS NULL AND abandoned_at IS NULL")
[[ $pending == 1 ]] || fail "the pending delivery is not kept in Postgres ($pending)"
api_node_start main --allow-webhook-net 127.0.0.1/32 --webhook-retry-base-ms 300
wait_events "$restart" 'any(.[]; .delivered)' 20
verify restart 2

# ---------------------------------------------------------------- cancelled
api_node_stop main
api_node_start intake --no-render --allow-webhook-net 127.0.0.1/32 --webhook-retry-base-ms 300
submit "$HOOKS/ok/cancel"
cancel=$(jq -r .id <<<"$body")
api_curl -X DELETE "$API_URL/api/v1/compositions/$cancel"
expect_status 200 cancel
wait_events "$cancel" 'any(.[]; .delivered)' 20
jq -e '.status == "cancelled" and .event == "composition.cancelled" and .output == null' \
    "$API_WORK/hooks/cancel.1.json" >/dev/null || fail "cancel webhook: $(cat "$API_WORK/hooks/cancel.1.json")"
verify cancel 1

# ---------------------------------------------------------------- address rules
for url in "http://10.0.0.1/hook" "http://[::1]:1/hook" "http://2130706434/hook" "ftp://example.com/x" \
    "not a url"; do
    submit "$url"
    expect_error 422 invalid_composition "webhook_url $url"
done
submit "http://127.0.0.1:1/allowed-by-flag"
expect_status 202 "loopback allowed by --allow-webhook-net"
api_node_stop intake
api_node_start strict --no-render
submit "$HOOKS/ok/strict"
expect_error 422 invalid_composition "loopback webhook without --allow-webhook-net"
[[ $(jq -r '.error.problems[0].message' <<<"$body") == *--allow-webhook-net* ]] \
    || fail "the refusal does not name the option: $body"
echo "webhooks: retries, signature, bound, restart, cancel, address rules: ok"
