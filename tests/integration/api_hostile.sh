# A hostile client with valid API keys against a real node (real Postgres
# and Redis): nesting bombs, file:// escapes, SSRF in every address form,
# playlists that point elsewhere, other tenants' work, oversized and
# never-ending downloads. After every attack the node must still serve.
# Connection-level attacks (thread exhaustion, truncated uploads, failed
# logins) are in test_api_hostile_conn.
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/apinode.sh"
api_setup

media=$API_WORK/media
mkdir -p "$media/sub" "$API_WORK/www"
api_media "$media/a.mp4" 1
cp "$media/a.mp4" "$API_WORK/secret.mp4" # outside the media root
cp "$media/a.mp4" "$API_WORK/www/a.mp4"
echo "not for you" >"$API_WORK/secret.txt"

# ---------------------------------------------------------------- HTTP servers
# The canary on 127.0.0.1 must never see a request (loopback is refused);
# the media server on 127.0.0.2 is an internal server the operator allowed.
declare -a SERVER_PIDS=()
serve() { # serve NAME ADDR: sets PORT_<NAME>
    local name=$1 addr=$2 i
    python3 "$CF_TESTS_DIR/lib/hostile_http.py" "$addr" "$API_WORK/www" "$API_WORK/$name.log" \
        "$API_WORK/$name.port" &
    SERVER_PIDS+=($!)
    for ((i = 0; i < 100; i++)); do
        [[ -s $API_WORK/$name.port ]] && break
        sleep 0.05
    done
    [[ -s $API_WORK/$name.port ]] || fail "test server $name did not start"
    printf -v "PORT_$name" '%s' "$(cat "$API_WORK/$name.port")"
    : >>"$API_WORK/$name.log"
}
stop_servers() { kill "${SERVER_PIDS[@]}" 2>/dev/null; }
trap 'rc=$?; stop_servers; (exit $rc); api_cleanup' EXIT
serve canary 127.0.0.1
serve media 127.0.0.2
CANARY=http://127.0.0.1:$PORT_canary
MEDIA=http://127.0.0.2:$PORT_media
printf '#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile://%s/secret.mp4\n#EXT-X-ENDLIST\n' \
    "$API_WORK" >"$API_WORK/www/list.m3u8"
printf "ffconcat version 1.0\nfile '%s/secret.mp4'\n" "$API_WORK" >"$media/list.ffconcat"
cp "$media/list.ffconcat" "$API_WORK/www/list.txt"
head -c 3000000 /dev/urandom >"$API_WORK/www/big.bin"

submit() { # submit SOURCE [TITLE]: POST a one-clip composition as $API_KEY
    local source=$1 title=${2:-hostile}
    api_curl -X POST -H 'Content-Type: application/json' \
        -d "$(jq -cn --arg s "$source" --arg t "$title" \
            '{title:$t,clips:[{source:$s}],output:{width:160,height:90,fps:25,preset:"fast"}}')" \
        "$API_URL/api/v1/compositions"
}
expect_refused_source() { # SOURCE REASON_PATTERN DESCRIPTION: 422 at submit
    submit "$1"
    expect_error 422 invalid_composition "$3"
    [[ $(jq -r '.error.problems[0].field' <<<"$body") == "clips[0].source" ]] || fail "$3: $body"
    [[ $(jq -r '.error.problems[0].message' <<<"$body") =~ $2 ]] || fail "$3: $body"
}
wait_status() { # ID: waits for a terminal status, leaves the composition in $comp_body
    local s
    s=$(api_wait_terminal "$1") || exit 1
    api_curl "$API_URL/api/v1/compositions/$1"
    comp_body=$body
    echo "$s"
}
expect_failed_with() { # ID PATTERN DESCRIPTION: failed, error message matching PATTERN
    local s
    s=$(wait_status "$1") || exit 1
    api_curl "$API_URL/api/v1/compositions/$1"
    [[ $s == failed ]] || fail "$3: expected failed, got $s: $body"
    local message
    message=$(jq -r .error.message <<<"$body")
    [[ $message =~ $2 ]] || fail "$3: error '$message' does not match /$2/"
    # Messages never reveal the node's own paths (cache, workspace, data dir).
    [[ $message != *"$API_WORK/main"* && $message != *"$API_WORK/caps"* && $message != *workspace/* ]] \
        || fail "$3: error reveals an internal path: $message"
}
alive() { # the node answers health and an ordinary read after an attack
    local saved=$status
    api_curl "$API_URL/healthz"
    [[ $status == 200 ]] || fail "node stopped serving after: $1 ($status)"
    api_curl "$API_URL/api/v1/compositions?limit=1"
    [[ $status == 200 ]] || fail "node stopped serving reads after: $1 ($status: $body)"
    status=$saved
}

# ---------------------------------------------------------------- a swapped symlink
# Checked again when the render opens the file, not only at submit: a node
# that only takes requests queues a composition whose symlink is then
# pointed out of the root; the rendering node must refuse it.
API_MEDIA_ROOT=$media api_node_start intake --no-render
ln -s "$media/a.mp4" "$media/swap.mp4"
API_KEY=$(api_key tenant-a) || exit 1
KEY_A=$API_KEY
submit "file://$media/swap.mp4" swapped
expect_status 202 "symlink inside the root"
swapped=$(jq -r .id <<<"$body")
ln -sfn "$API_WORK/secret.mp4" "$media/swap.mp4"
api_node_stop intake

API_MEDIA_ROOT=$media api_node_start main --allow-source-net 127.0.0.2/32
expect_failed_with "$swapped" 'outside the media roots' "symlink swapped after submit"
alive "swapped symlink"

# ---------------------------------------------------------------- 1. nesting
# A 2 KB body of nested arrays used to crash the node (jansson recursing on
# a 100 KiB request-thread stack): every variant gets 400 naming the limit.
nest() { # nest OPEN CLOSE DEPTH [INNER]
    local open='' close='' i
    for ((i = 0; i < $3; i++)); do open+=$1 close+=$2; done
    printf '%s%s%s' "$open" "${4-}" "$close"
}
for variant in arrays objects in-field deep; do
    case $variant in
        arrays) doc=$(nest '[' ']' 950) ;;
        objects) doc=$(nest '{"a":' '}' 950 1) ;;
        in-field) doc="{\"title\":\"x\",\"clips\":[{\"source\":\"file://$media/a.mp4\",\"x\":$(nest '[' ']' 200)}]}" ;;
        deep) doc=$(nest '[' ']' 100000) ;;
    esac
    printf '%s' "$doc" >"$API_WORK/nested.json"
    api_curl -X POST -H 'Content-Type: application/json' --data-binary "@$API_WORK/nested.json" \
        "$API_URL/api/v1/compositions"
    expect_error 400 too_deep "nesting ($variant)"
    [[ $(jq -r .error.limit <<<"$body") == 32 && $(jq -r .error.message <<<"$body") == *32* ]] \
        || fail "nesting ($variant): the limit is not named: $body"
    alive "nesting ($variant)"
done
# Brackets inside strings are not nesting; 32 levels are still fine JSON.
api_curl -X POST -H 'Content-Type: application/json' \
    --data-binary "{\"title\":\"$(nest '[' '' 200)\",\"clips\":[{\"source\":\"file://$media/a.mp4\"}],\"output\":{\"width\":160,\"height\":90,\"fps\":25,\"preset\":\"fast\"}}" \
    "$API_URL/api/v1/compositions"
expect_status 202 "brackets inside a string"
api_curl -X POST -H 'Content-Type: application/json' --data-binary "$(nest '[' ']' 32)" \
    "$API_URL/api/v1/compositions"
expect_error 422 invalid_composition "32 levels: parsed, then judged as a composition"

# ---------------------------------------------------------------- 2. local files
expect_refused_source "file:///etc/passwd" '^outside the media roots$' "absolute path outside"
outside_missing=$(submit "file:///etc/no-such-file" >/dev/null; jq -r '.error.problems[0].message' <<<"$body")
[[ $outside_missing == "outside the media roots" ]] \
    || fail "a missing file outside the roots answers differently (existence leak): $outside_missing"
expect_refused_source "file://$media/../secret.mp4" 'outside the media roots' "dot-dot"
expect_refused_source "file://$media/sub/../../secret.mp4" 'outside the media roots' "dot-dot below"
expect_refused_source "file://$media/%2e%2e/secret.mp4" 'outside the media roots' "percent-encoded dot-dot"
expect_refused_source "file://$media/sub/..%2F..%2Fsecret.mp4" 'outside the media roots' \
    "percent-encoded slashes"
ln -s "$API_WORK/secret.mp4" "$media/link.mp4"
expect_refused_source "file://$media/link.mp4" 'outside the media roots' "symlink out of the root"
ln -s /etc "$media/etc"
expect_refused_source "file://$media/etc/passwd" 'outside the media roots' "directory symlink"
alive "file escapes"
# Inside the root, a playlist or concat list that names other files is refused.
submit "file://$media/list.ffconcat"
expect_status 202 "concat list inside the root (judged when opened)"
expect_failed_with "$(jq -r .id <<<"$body")" 'not accepted as a source' "concat list"
submit "$MEDIA/files/list.m3u8"
expect_status 202 "HLS playlist on an allowed server"
expect_failed_with "$(jq -r .id <<<"$body")" 'playlist.*not accepted' "HLS playlist with a file:// segment"
submit "$MEDIA/files/list.txt"
expect_failed_with "$(jq -r .id <<<"$body")" 'not accepted as a source' "concat list over http"
# An ordinary file in the root renders.
submit "file://$media/a.mp4" good
expect_status 202 "file in the root"
good=$(jq -r .id <<<"$body")
[[ $(wait_status "$good") == completed ]] || fail "a file in the root did not render: $comp_body"
alive "local files"

# ---------------------------------------------------------------- 3. SSRF
# IP literals in every form the resolver accepts: refused at submit, no
# request sent anywhere.
for target in "127.0.0.1:$PORT_canary" "2130706433:$PORT_canary" "0x7f.1:$PORT_canary" \
    "127.1:$PORT_canary" "017700000001:$PORT_canary" "[::1]:$PORT_canary" \
    "[::ffff:127.0.0.1]:$PORT_canary" "[::ffff:7f00:1]:$PORT_canary" "[::127.0.0.1]:$PORT_canary" \
    "0.0.0.0:$PORT_canary" "169.254.169.254" "10.1.2.3" "172.16.0.1" "192.168.1.1" "100.64.0.1" \
    "[fe80::1]" "[fd00::1]" "[64:ff9b::7f00:1]" "[2002:7f00:1::]" "224.0.0.1" "user@127.0.0.1:$PORT_canary" \
    "127.0.0.1.:$PORT_canary"; do
    expect_refused_source "http://$target/files/a.mp4" 'source address not allowed' "SSRF literal $target"
done
expect_refused_source "https://[::1]:$PORT_canary/a.mp4" 'source address not allowed' "SSRF https"
alive "SSRF literals"
# Host names are judged at connect time: the composition fails, open and
# closed ports alike (no port scan through error texts).
submit "http://localhost:$PORT_canary/files/a.mp4"
expect_status 202 "host name (resolved at connect time)"
expect_failed_with "$(jq -r .id <<<"$body")" 'source address not allowed' "SSRF by host name"
msg_open=$(jq -r .error.message <<<"$body")
closed=$(cf_free_port)
submit "http://localhost:$closed/files/a.mp4"
expect_failed_with "$(jq -r .id <<<"$body")" 'source address not allowed' "SSRF closed port"
# A redirect from an allowed server to loopback is refused at the redirect.
submit "$MEDIA/redirect?to=http://127.0.0.1:$PORT_canary/files/a.mp4"
expect_status 202 "redirect source"
expect_failed_with "$(jq -r .id <<<"$body")" 'source address not allowed' "SSRF by redirect"
submit "$MEDIA/redirect?to=http://localhost:$PORT_canary/files/a.mp4"
expect_failed_with "$(jq -r .id <<<"$body")" 'source address not allowed' "SSRF by redirect to a name"
[[ ! -s $API_WORK/canary.log ]] || fail "a refused address was contacted: $(cat "$API_WORK/canary.log")"
# The allowed internal server works.
submit "$MEDIA/files/a.mp4" allowed
allowed=$(jq -r .id <<<"$body")
[[ $(wait_status "$allowed") == completed ]] || fail "allowed internal server: $comp_body"
alive "SSRF"

# ---------------------------------------------------------------- 4. tenancy
KEY_B=$(api_key tenant-b) || exit 1
KEY_ADMIN=$("$CF_BIN" apikey create boss --admin --database-url "$API_DB" \
    --cluster-secret-file "$API_SECRET" 2>/dev/null) || fail "apikey create --admin"
"$CF_BIN" apikey list --json --database-url "$API_DB" --cluster-secret-file "$API_SECRET" \
    >"$API_WORK/keys.json" || fail "apikey list"
jq -e '[.[] | select(.name == "boss")][0].scope == "admin" and
       [.[] | select(.name == "tenant-b")][0].scope == "own"' "$API_WORK/keys.json" >/dev/null \
    || fail "apikey list does not show the scope: $(cat "$API_WORK/keys.json")"
API_KEY=$KEY_B
for path in "" /segments /events /output; do
    api_curl --max-time 5 "$API_URL/api/v1/compositions/$good$path"
    expect_error 404 not_found "another key's composition$path"
done
# The same id in upper case is the same composition: the same 404, word for
# word (it names the id canonically), on every route.
upper=$(tr a-f A-F <<<"$good")
for path in "" /segments /events /output; do
    api_curl --max-time 5 "$API_URL/api/v1/compositions/$good$path"
    lower_body=$body
    api_curl --max-time 5 "$API_URL/api/v1/compositions/$upper$path"
    expect_error 404 not_found "another key's composition$path by upper-case id"
    [[ $body == "$lower_body" ]] || fail "upper-case id$path: $body vs $lower_body"
done
api_curl -X DELETE "$API_URL/api/v1/compositions/$upper"
expect_error 404 not_found "cancel another key's composition by upper-case id"
api_curl -X DELETE "$API_URL/api/v1/compositions/$good"
expect_error 404 not_found "cancel another key's composition"
api_curl "$API_URL/api/v1/compositions?limit=100"
jq -e '.items == []' <<<"$body" >/dev/null || fail "key B lists others' compositions: $body"
api_curl "$API_URL/api/v1/compositions?status=completed&fields=id"
jq -e '.items == []' <<<"$body" >/dev/null || fail "key B lists by status: $body"
expect_exit 1 "$CF_BIN" get "$good" --server "$API_URL" --api-key "$KEY_B"
# The owner and an admin see it.
API_KEY=$KEY_A
api_curl "$API_URL/api/v1/compositions/$good/output" -o /dev/null
expect_status 200 "owner downloads"
api_curl "$API_URL/api/v1/compositions/$good"
lower_body=$body
api_curl "$API_URL/api/v1/compositions/$upper"
expect_status 200 "owner reads by upper-case id"
[[ $body == "$lower_body" ]] || fail "owner's upper-case read differs: $body vs $lower_body"
api_curl "$API_URL/api/v1/compositions/$upper/output" -o /dev/null
expect_status 200 "owner downloads by upper-case id"
API_KEY=$KEY_ADMIN
api_curl "$API_URL/api/v1/compositions/$good"
expect_status 200 "admin reads"
expect_exit 0 "$CF_BIN" ls --all --json --server "$API_URL" --api-key "$KEY_ADMIN"
jq -e --arg id "$good" 'map(.id) | index($id) != null' <<<"$out" >/dev/null \
    || fail "admin ls does not list key A's composition: $out"
expect_exit 0 "$CF_BIN" status --server "$API_URL" --api-key "$KEY_ADMIN"
# Uploads are their uploader's: another key cannot render from them.
API_KEY=$KEY_A
api_curl -X POST -H 'Content-Type: video/mp4' --data-binary "@$media/a.mp4" "$API_URL/api/v1/media"
expect_status 201 "upload by key A"
ref=$(jq -r .ref <<<"$body")
API_KEY=$KEY_B
expect_refused_source "$ref" 'no such blob' "key B uses key A's upload"
API_KEY=$KEY_A
submit "$ref" from-upload
expect_status 202 "key A uses its upload"
[[ $(wait_status "$(jq -r .id <<<"$body")") == completed ]] || fail "render from upload: $comp_body"
alive "tenancy"

# ---------------------------------------------------------------- 9. blob refs
expect_refused_source "blob:abcdef0123456789" 'blob' "short blob ref"
expect_refused_source "blob:$(printf 'A%.0s' {1..64})" 'blob' "upper-case blob ref"

# ---------------------------------------------------------------- 7. downloads
# A slow download longer than the queue's consumer TTL (10 s) keeps its
# heartbeat: the composition is taken once, not requeued mid-fetch.
size=$(stat -c %s "$API_WORK/www/a.mp4")
submit "$MEDIA/slow/a.mp4?bps=$((size / 12 + 1))" slow
slow=$(jq -r .id <<<"$body")
[[ $(wait_status "$slow") == completed ]] || fail "slow download: $comp_body"
takes=$(psql "$API_DB" -qAtX -c "SELECT count(*) FROM events WHERE composition_id = '$slow'
    AND type = 'status' AND payload->>'to' = 'planning'")
[[ $takes == 1 ]] || fail "a composition was taken $takes times during one slow download"
# DELETE stops a download in progress within 2 s and leaves no partial file.
submit "$MEDIA/slow/a.mp4?bps=500" cancel-me
cancel=$(jq -r .id <<<"$body")
for ((i = 0; i < 100; i++)); do
    grep -q "/slow/a.mp4?bps=500" "$API_WORK/media.log" && break
    sleep 0.1
done
sleep 0.5
api_curl -X DELETE "$API_URL/api/v1/compositions/$cancel"
expect_status 200 "cancel during download"
t0=$(date +%s.%N)
while find "$API_WORK/main" -name '*.part' | grep -q .; do
    (($(echo "$(date +%s.%N) - $t0 > 5" | bc) == 0)) || fail "download still running 5 s after DELETE"
    sleep 0.05
done
stopped=$(echo "$(date +%s.%N) - $t0" | bc)
echo "download stopped ${stopped}s after DELETE"
(($(echo "$stopped < 2.5" | bc))) || fail "download stopped only ${stopped}s after DELETE (promised 2 s)"
alive "downloads"
metrics=$(curl -s "$API_URL/metrics")
for reason in json_depth source_policy blob_not_owned; do
    grep -q "^api_refused_total{reason=\"$reason\"} [1-9]" <<<"$metrics" \
        || fail "refusals ($reason) are not counted in /metrics: $(grep refused <<<"$metrics")"
done
api_node_stop main

# Caps: size (declared and undeclared length) and overall time (dripping,
# stalled), on a node with small limits.
API_MEDIA_ROOT=$media api_node_start caps --allow-source-net 127.0.0.2/32 \
    --max-source-bytes 1000000 --fetch-timeout-s 2 --upload-quota-bytes 150000
submit "$MEDIA/files/big.bin"
expect_failed_with "$(jq -r .id <<<"$body")" 'larger than 1000000 bytes' "source over the cap (declared)"
submit "$MEDIA/nolength/big.bin"
expect_failed_with "$(jq -r .id <<<"$body")" 'larger than 1000000 bytes' "source over the cap (no length)"
submit "$MEDIA/slow/a.mp4?bps=2000"
expect_failed_with "$(jq -r .id <<<"$body")" 'not fetched within 2 s' "dripping source"
submit "$MEDIA/stall/a.mp4"
expect_failed_with "$(jq -r .id <<<"$body")" 'not fetched within 2 s' "stalled source"
find "$API_WORK/caps" -name '*.part' | grep -q . && fail "partial downloads left behind"
alive "download caps"
# Upload quota per key: declared length over it, then a stream without one.
head -c 100000 /dev/urandom >"$API_WORK/u1.bin"
head -c 100000 /dev/urandom >"$API_WORK/u2.bin"
API_KEY=$KEY_B
api_curl -X POST -H 'Content-Type: application/octet-stream' --data-binary "@$API_WORK/u1.bin" \
    "$API_URL/api/v1/media"
expect_status 201 "upload within the quota"
api_curl -X POST -H 'Content-Type: application/octet-stream' --data-binary "@$API_WORK/u2.bin" \
    "$API_URL/api/v1/media"
expect_error 413 quota_exceeded "upload over the quota (declared length)"
api_curl -X POST -H 'Content-Type: application/octet-stream' -H 'Transfer-Encoding: chunked' \
    --data-binary "@$API_WORK/u2.bin" "$API_URL/api/v1/media"
expect_error 413 quota_exceeded "upload over the quota (chunked, no length)"
API_KEY=$KEY_A
api_curl -X POST -H 'Content-Type: application/octet-stream' --data-binary "@$API_WORK/u2.bin" \
    "$API_URL/api/v1/media"
expect_status 201 "another key's quota is its own"
alive "upload quota"
curl -s "$API_URL/metrics" | grep -q '^api_refused_total{reason="upload_quota"} 2$' \
    || fail "refused uploads are not counted in /metrics: $(curl -s "$API_URL/metrics" | grep refused)"
echo "hostile: all attacks refused, node serving"
