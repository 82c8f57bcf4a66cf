# Real clipfarm nodes for the REST API and client tests. Source it after
# testlib.sh. Every test gets its own database, Redis key prefix, cluster
# secret and data dirs under one temp dir; nodes are stopped and the dir
# removed on exit.
#
#   api_setup                   fresh database, prefix, secret (needs
#                               CF_TEST_DATABASE_URL and CF_TEST_REDIS_URL)
#   api_node_start NAME [FLAGS] starts a node, waits for /healthz; sets
#                               API_URL (and API_URL_<NAME>); file://
#                               sources may come from $API_WORK (set
#                               API_MEDIA_ROOT to another dir, or to ""
#                               for none)
#   api_node_stop NAME          SIGTERM and wait
#   api_key NAME                prints a new API key
#   api_media PATH [SECONDS]    160x90 25 fps test video with a sine tone
#   api_curl ARGS...            curl with the key; leaves status in $status,
#                               body in $body, headers in $headers
#
# CF_NODE_CMD overrides the node command (default "$CF_BIN node").
source "$CF_TESTS_DIR/lib/servers.sh"
cf_require_env CF_TEST_DATABASE_URL CF_TEST_REDIS_URL
command -v jq >/dev/null || fail "jq is not installed (tests/lib/deps.sh installs it)"
command -v curl >/dev/null || fail "curl is not installed"

API_WORK=$(mktemp -d "${TMPDIR:-/tmp}/cf-api.XXXXXX")
declare -A API_PIDS=()
API_KEY=""

# A node must leave cleanly on SIGTERM: exit 0, and (under the sanitizer
# pass) no AddressSanitizer/LeakSanitizer report in its log.
api_check_exit() {
    local name=$1 code=$2
    if [[ $code != 0 ]] || grep -q 'Sanitizer' "$API_WORK/$name/log" 2>/dev/null; then
        echo "node $name exited with $code:" >&2
        tail -n 40 "$API_WORK/$name/log" >&2
        return 1
    fi
}

api_cleanup() {
    local rc=$? name code bad=0
    for name in "${!API_PIDS[@]}"; do
        kill -TERM "${API_PIDS[$name]}" 2>/dev/null
    done
    for name in "${!API_PIDS[@]}"; do
        wait "${API_PIDS[$name]}" 2>/dev/null
        code=$?
        api_check_exit "$name" "$code" || bad=1
    done
    rm -rf "$API_WORK"
    ((bad && rc == 0)) && exit 1
    exit "$rc"
}
trap api_cleanup EXIT

api_setup() {
    API_DB=$(cf_fresh_database)
    API_PREFIX="cftest:$(basename "$API_WORK"):"
    API_SECRET=$API_WORK/secret
    # The product's own generator, no fallback: a broken `secret generate`
    # fails every test that uses it.
    "$CF_BIN" secret generate >"$API_SECRET" 2>"$API_WORK/secret.err" \
        || fail "clipfarm secret generate: $(cat "$API_WORK/secret.err")"
    [[ -s $API_SECRET ]] || fail "clipfarm secret generate printed nothing"
    chmod 600 "$API_SECRET"
    export CF_DATABASE_URL=$API_DB CF_CLUSTER_SECRET_FILE=$API_SECRET
}

api_node_start() {
    local name=$1
    shift
    local port cport attempt i
    mkdir -p "$API_WORK/$name"
    # A port free when we looked may be taken by the time the node binds it
    # (ephemeral ports of other tests' connections): then try other ports.
    for attempt in 1 2 3; do
        port=$(cf_free_port) || fail "no free port"
        cport=$(cf_free_port) || fail "no free port"
        local roots=()
        [[ -n ${API_MEDIA_ROOT-$API_WORK} ]] && roots=(--media-root "${API_MEDIA_ROOT-$API_WORK}")
        # shellcheck disable=SC2086
        ${CF_NODE_CMD:-$CF_BIN node} "${roots[@]}" --database-url "$API_DB" --redis-url "$CF_TEST_REDIS_URL" \
            --redis-prefix "$API_PREFIX" --http-addr "127.0.0.1:$port" \
            --control-addr "127.0.0.1:$cport" --data-dir "$API_WORK/$name/data" \
            --cluster-secret-file "$API_SECRET" "$@" >"$API_WORK/$name/log" 2>&1 &
        API_PIDS[$name]=$!
        for ((i = 0; i < 300; i++)); do
            if curl -sf -o /dev/null "http://127.0.0.1:$port/healthz"; then
                API_URL=http://127.0.0.1:$port
                printf -v "API_URL_$name" '%s' "$API_URL"
                API_PORT=$port
                return 0
            fi
            kill -0 "${API_PIDS[$name]}" 2>/dev/null || break
            sleep 0.1
        done
        wait "${API_PIDS[$name]}" 2>/dev/null
        unset "API_PIDS[$name]"
        grep -q 'Address already in use' "$API_WORK/$name/log" || break
    done
    cat "$API_WORK/$name/log" >&2
    fail "node $name did not come up on port $port"
}

api_node_stop() {
    local name=$1 pid=${API_PIDS[$1]:-} code
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    code=$?
    unset "API_PIDS[$name]"
    api_check_exit "$name" "$code" || fail "node $name did not stop cleanly"
}

api_node_log() {
    cat "$API_WORK/$1/log"
}

api_key() {
    "$CF_BIN" apikey create "$1" --database-url "$API_DB" --cluster-secret-file "$API_SECRET" \
        2>"$API_WORK/apikey.err" || fail "apikey create $1: $(cat "$API_WORK/apikey.err")"
}

api_media() {
    local path=$1 seconds=${2:-1}
    ffmpeg -loglevel error -y -f lavfi -i "testsrc2=size=160x90:rate=25:duration=$seconds" \
        -f lavfi -i "sine=frequency=440:duration=$seconds" -c:v libx264 -preset ultrafast -g 25 \
        -c:a aac -shortest "$path" || fail "ffmpeg could not make $path"
}

# A composition of one clip of PATH, tiny and fast to render.
api_comp_json() {
    local path=$1 title=${2:-test}
    printf '{"title":"%s","clips":[{"source":"file://%s"}],"output":{"width":160,"height":90,"fps":25,"preset":"fast"}}' \
        "$title" "$path"
}

api_curl() {
    local tmp_body tmp_head
    tmp_body=$(mktemp) tmp_head=$(mktemp)
    local auth=()
    [[ -n $API_KEY ]] && auth=(-H "Authorization: Bearer $API_KEY")
    status=$(curl -s -o "$tmp_body" -D "$tmp_head" -w '%{http_code}' "${auth[@]}" "$@")
    body=$(cat "$tmp_body")
    headers=$(tr -d '\r' <"$tmp_head")
    rm -f "$tmp_body" "$tmp_head"
}

# expect_status CODE DESCRIPTION: the last api_curl answered CODE.
expect_status() {
    [[ $status == "$1" ]] || fail "$2: expected HTTP $1, got $status: $body"
}

# expect_error CODE ERROR_CODE DESCRIPTION: HTTP CODE with our error shape.
expect_error() {
    expect_status "$1" "$3"
    [[ $(jq -r '.error.code' <<<"$body") == "$2" ]] || fail "$3: expected error code $2: $body"
    jq -e '.error | has("message") and has("field")' <<<"$body" >/dev/null \
        || fail "$3: error lacks message or field: $body"
}

# Waits until composition ID reaches a terminal status; prints it. (Run in
# $(...), so $body is not left behind: fetch again to look inside.)
api_wait_terminal() {
    local id=$1 i s
    for ((i = 0; i < 600; i++)); do
        api_curl "$API_URL/api/v1/compositions/$id"
        s=$(jq -r .status <<<"$body")
        case $s in completed | failed | cancelled) echo "$s"; return 0 ;; esac
        sleep 0.1
    done
    fail "composition $id did not finish: $body"
}
