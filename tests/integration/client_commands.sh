# The client commands against a real node: submit (--wait with a live bar
# on a TTY, exit codes), ls, get, cancel, download (byte for byte, resume of
# a partial file), status, nodes; --json on each; server errors and
# unreachable servers as one clear line.
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/apinode.sh"
api_setup
api_media "$API_WORK/a.mp4" 2
api_comp_json "$API_WORK/a.mp4" good >"$API_WORK/good.json"
api_comp_json "$API_WORK/missing.mp4" broken >"$API_WORK/broken.json"
echo '{"clips":[{"source":"file:///x.mp4","start":3,"end":1}]}' >"$API_WORK/invalid.json"

api_node_start a
export CF_SERVER=$API_URL
CF_API_KEY=$(api_key client) || exit 1
export CF_API_KEY

# ---------------------------------------------------------------- submit
expect_exit 0 "$CF_BIN" submit "$API_WORK/good.json"
[[ $out =~ ^[0-9a-f-]{36}$ ]] || fail "submit prints the id: $out"
expect_exit 0 "$CF_BIN" submit --wait "$API_WORK/good.json"
[[ $out =~ ^completed\ ([0-9a-f-]{36})\ \( ]] || fail "submit --wait: $out"
id=${BASH_REMATCH[1]}
expect_exit 0 "$CF_BIN" submit --wait --json "$API_WORK/good.json"
[[ $(jq -r .status <<<"$out") == completed ]] || fail "submit --wait --json: $out"
# On a terminal: a live progress bar redrawn in place on stderr.
script -qec "'$CF_BIN' submit --wait '$API_WORK/good.json'" "$API_WORK/tty.log" >/dev/null \
    || fail "submit --wait on a TTY failed: $(cat "$API_WORK/tty.log")"
# The pty ends every line with \r\n: only a \r that is not a line end is a
# bar redrawn in place.
sed 's/\r$//' "$API_WORK/tty.log" | grep -q $'\r' \
    || fail "no bar redrawn on the TTY: $(cat -A "$API_WORK/tty.log")"
grep -qE '\[#+\.*\] +100%|100%' "$API_WORK/tty.log" || fail "no bar at 100%: $(cat -A "$API_WORK/tty.log")"
# A composition that fails to render: exit 1, one line saying why.
expect_exit 1 "$CF_BIN" submit --wait "$API_WORK/broken.json"
expect_one_line "$err" "^clipfarm submit: composition [0-9a-f-]{36} failed: render_failed: .*missing.mp4"
# Refused by the server: one line with its error.
expect_exit 1 "$CF_BIN" submit "$API_WORK/invalid.json"
expect_one_line "$err" "^clipfarm submit: HTTP 422 invalid_composition: .*clips\[0\]\.end"
expect_exit 2 "$CF_BIN" submit "$API_WORK/nope.json"
expect_one_line "$err" "^clipfarm submit: cannot read '.*nope.json'"

# ---------------------------------------------------------------- ls, get
expect_exit 0 "$CF_BIN" ls
[[ $(head -n 1 <<<"$out") == ID* && $out == *"$id"* ]] || fail "ls: $out"
expect_exit 0 "$CF_BIN" ls --status failed --json
[[ $(jq -r 'map(.status) | unique | join(",")' <<<"$out") == failed ]] || fail "ls --status: $out"
expect_exit 0 "$CF_BIN" ls --limit 1 --all --json
[[ $(jq length <<<"$out") == 5 ]] || fail "ls --all should follow every page: $out"
expect_exit 0 "$CF_BIN" get "$id"
grep -q '^status      completed$' <<<"$out" || fail "get: $out"
expect_exit 0 "$CF_BIN" get --json "$id"
[[ $(jq -r .id <<<"$out") == "$id" ]] || fail "get --json: $out"
expect_exit 1 "$CF_BIN" get 00000000-0000-4000-8000-000000000000
expect_one_line "$err" "^clipfarm get: HTTP 404 not_found: composition .* not found"
expect_exit 2 "$CF_BIN" get not-an-id
expect_one_line "$err" "^clipfarm get: 'not-an-id' is not a composition id"

# ---------------------------------------------------------------- cancel
expect_exit 1 "$CF_BIN" cancel "$id"
expect_one_line "$err" "^clipfarm cancel: HTTP 409 already_terminal: .* already completed"
# A node with its own queue that nobody renders: what it takes stays queued.
saved_prefix=$API_PREFIX
API_PREFIX="${API_PREFIX}idle:"
api_node_start idle --no-render
API_PREFIX=$saved_prefix
queued=$(CF_SERVER=$API_URL "$CF_BIN" submit "$API_WORK/good.json") || fail "submit to idle node"
expect_exit 0 "$CF_BIN" cancel --json "$queued"
[[ $(jq -r .status <<<"$out") == cancelled ]] || fail "cancel --json: $out"
expect_exit 0 "$CF_BIN" get --json "$queued"
[[ $(jq -r .status <<<"$out") == cancelled ]] || fail "cancelled composition: $out"

# ---------------------------------------------------------------- download
curl -sf -H "Authorization: Bearer $CF_API_KEY" -o "$API_WORK/reference.mp4" \
    "$CF_SERVER/api/v1/compositions/$id/output" || fail "reference download"
size=$(stat -c %s "$API_WORK/reference.mp4")
expect_exit 0 "$CF_BIN" download "$id" -o "$API_WORK/dl.mp4"
expect_one_line "$out" "^downloaded .*dl.mp4 \($size bytes\)$"
cmp "$API_WORK/dl.mp4" "$API_WORK/reference.mp4" || fail "download differs"
[[ ! -e $API_WORK/dl.mp4.part ]] || fail "part file left behind"
# Resume: a partial file from an interrupted download is completed with a
# Range request, not fetched again.
head -c 3000 "$API_WORK/reference.mp4" >"$API_WORK/resume.mp4.part"
before=$(curl -s "$CF_SERVER/metrics" | grep -F 'route="/api/v1/compositions/{id}/output",status="206"}' \
    | grep -v _bucket | grep '^http_requests_total' | awk '{print $2}')
expect_exit 0 "$CF_BIN" download --json "$id" -o "$API_WORK/resume.mp4"
[[ $(jq .resumed_from <<<"$out") == 3000 && $(jq .size_bytes <<<"$out") == "$size" ]] \
    || fail "resume: $out"
cmp "$API_WORK/resume.mp4" "$API_WORK/reference.mp4" || fail "resumed download differs"
after=$(curl -s "$CF_SERVER/metrics" | grep -F 'route="/api/v1/compositions/{id}/output",status="206"}' \
    | grep '^http_requests_total' | awk '{print $2}')
((${after:-0} == ${before:-0} + 1)) || fail "resume did not use one Range request ($before -> $after)"
# A part file as long as the output is complete already.
cp "$API_WORK/reference.mp4" "$API_WORK/full.mp4.part"
expect_exit 0 "$CF_BIN" download "$id" -o "$API_WORK/full.mp4"
cmp "$API_WORK/full.mp4" "$API_WORK/reference.mp4" || fail "complete part file"
# A part file longer than the output cannot be its prefix: removed, said so.
{ cat "$API_WORK/reference.mp4"; echo extra; } >"$API_WORK/long.mp4.part"
expect_exit 1 "$CF_BIN" download "$id" -o "$API_WORK/long.mp4"
expect_one_line "$err" "^clipfarm download: the partial file did not match"
expect_exit 0 "$CF_BIN" download "$id" -o "$API_WORK/long.mp4"
cmp "$API_WORK/long.mp4" "$API_WORK/reference.mp4" || fail "download after a bad part file"
expect_exit 1 "$CF_BIN" download "$queued" -o "$API_WORK/none.mp4"
expect_one_line "$err" "^clipfarm download: HTTP 409 not_ready: "
expect_exit 2 "$CF_BIN" download "$id"
expect_one_line "$err" "^clipfarm download: -o FILE is required"

# ---------------------------------------------------------------- status, nodes
expect_exit 0 "$CF_BIN" status
[[ $out == *"cluster "* && $out == *"queue "* && $out == *NODE* ]] || fail "status: $out"
expect_exit 0 "$CF_BIN" status --json
jq -e '(.cluster.nodes | length) == 2 and (.active | type) == "array"' <<<"$out" >/dev/null \
    || fail "status --json: $out"
expect_exit 0 "$CF_BIN" nodes
# Two nodes run (a and idle): a header and one line each.
[[ $(head -n 1 <<<"$out") == NODE* && $(wc -l <<<"$out") == 3 ]] || fail "nodes: $out"
expect_exit 0 "$CF_BIN" nodes --json
jq -e 'length == 2 and all(.[]; has("id") and has("role"))' <<<"$out" >/dev/null \
    || fail "nodes --json: $out"

# ---------------------------------------------------------------- errors
for cmd in status "ls" "get $id" "nodes" "download $id -o $API_WORK/x.mp4"; do
    # shellcheck disable=SC2086
    expect_exit 2 "$CF_BIN" $cmd --server http://127.0.0.1:1
    expect_one_line "$err" "cannot reach http://127\.0\.0\.1:1/.*"
    # shellcheck disable=SC2086
    expect_exit 1 env CF_API_KEY=cf_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA \
        "$CF_BIN" $cmd
    expect_one_line "$err" "HTTP 401 unauthorized: invalid API key"
done
echo "client_commands: ok"
