# Helpers shared by the cluster tests (sourced). Named .bash so the test
# glob (tests/cluster/*.sh) does not take it for a test. Every test builds
# its own network with cluster/netns.
source "$CF_TESTS_DIR/lib/testlib.sh"
cf_require_root
command -v jq >/dev/null || { echo "skip: jq is not installed"; exit 77; }
source "$CF_SOURCE_DIR/cluster/netns"

# Node timing for tests: short lease and grace so failures show quickly.
CL_TTL=${CL_TTL:-3}
CL_GRACE=${CL_GRACE:-1.5}
CL_HEARTBEAT=${CL_HEARTBEAT:-0.25}
CL_TIMING=(--lease-ttl "$CL_TTL" --peer-grace "$CL_GRACE" --heartbeat-interval "$CL_HEARTBEAT")

# Fails the test with the nodes' logs.
cl_fail() {
    cfnet_logs >&2
    fail "$@"
}

# alive_peers I: how many peers node I sees alive.
alive_peers() { cfnet_jq "$1" '[.peers[] | select(.state == "alive")] | length'; }

# sees_all I N: node I sees N alive peers.
sees_all() { [[ $(alive_peers "$1") == "$2" ]]; }

# all_see N NODES...: each of NODES sees N alive peers.
all_see() {
    local n=$1 i
    shift
    for i in "$@"; do sees_all "$i" "$n" || return 1; done
}

ready() { [[ -s $(cfnet_status "$1") ]]; }
all_ready() {
    local i
    for i in "$@"; do ready "$i" || return 1; done
}

node_id() { cfnet_jq "$1" .id; }
role() { cfnet_jq "$1" .role; }
epoch() { cfnet_jq "$1" .epoch; }
counter() { cfnet_jq "$1" ".counters.$2"; }

# coordinators NODES...: the nodes among NODES that say they are coordinator.
coordinators() {
    local i out=()
    for i in "$@"; do [[ $(role "$i" 2>/dev/null) == coordinator ]] && out+=("$i"); done
    echo "${out[@]}"
}
one_coordinator() { [[ $(coordinators "$@" | wc -w) == 1 ]]; }

# cl_finish: the end of every test. Stops each node still running with
# SIGTERM: it must exit with status 0 within 2 s (a clean leave, and under
# the sanitizers no leak or error at exit); no node log may hold a
# sanitizer report.
cl_finish() {
    local i pid status t0
    for ((i = 1; i <= CFNET_COUNT; i++)); do
        pid=$(cfnet_pid "$i")
        [[ -n $pid && ! -e $CFNET_DIR/h$i/killed ]] || continue
        kill -0 "$pid" 2>/dev/null || continue
        kill -CONT "$pid" 2>/dev/null
        t0=$(cfnet_now_ms)
        kill -TERM "$pid"
        wait "$pid"
        status=$?
        ((status == 0)) || cl_fail "node $i exited with status $status after SIGTERM"
        (($(cfnet_now_ms) - t0 <= 2000)) || cl_fail "node $i took more than 2 s to leave"
    done
    if grep -lE "ERROR: (Address|Leak|UndefinedBehavior)Sanitizer|runtime error:" \
        "$CFNET_DIR"/h*/err; then
        cl_fail "a sanitizer reported a problem in a node (see above)"
    fi
}
