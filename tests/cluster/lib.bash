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

# An independent record of every fenced write, kept by Postgres itself (a
# test-only trigger, not the nodes' counters, and not cluster_view, which
# the coordinator rewrites every second and so hides a stale write soon
# after): each write of cluster_view, and each departure recorded in nodes,
# with the epoch it carried. Install after the nodes migrated the schema.
cl_audit_install() {
    cfnet_psql <<'SQL' >/dev/null
CREATE TABLE cf_test_audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    what text NOT NULL,
    epoch bigint
);
CREATE FUNCTION cf_test_audit_view() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO cf_test_audit (what, epoch) VALUES ('cluster_view', NEW.epoch); RETURN NEW; END $$;
CREATE FUNCTION cf_test_audit_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.gone_epoch IS DISTINCT FROM OLD.gone_epoch THEN
        INSERT INTO cf_test_audit (what, epoch) VALUES ('gone ' || NEW.id, NEW.gone_epoch);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER cf_test_audit_view AFTER INSERT OR UPDATE ON cluster_view
    FOR EACH ROW EXECUTE FUNCTION cf_test_audit_view();
CREATE TRIGGER cf_test_audit_gone AFTER UPDATE ON nodes
    FOR EACH ROW EXECUTE FUNCTION cf_test_audit_gone();
SQL
}
# The last audit row's id (0 when none): writes after this moment have higher ids.
cl_audit_mark() { cfnet_psql -c "SELECT coalesce(max(id), 0) FROM cf_test_audit"; }
# cl_audit_count MARK EPOCH: fenced writes after MARK that carried EPOCH.
cl_audit_count() { cfnet_psql -c "SELECT count(*) FROM cf_test_audit WHERE id > $1 AND epoch = $2"; }

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

# ---------------------------------------------------------------- rendering
# The REST API of node I (from the host, over the bridge).
cl_api() { echo "http://$(cfnet_addr "$1"):8080"; }

# cl_media NAME LAVFI_VIDEO SECONDS [AUDIO]: a generated source in the
# cluster's media root (CL_MEDIA), H.264 + AAC unless AUDIO is "none".
cl_media() {
    local name=$1 video=$2 secs=$3 audio=${4:-sine=frequency=440:sample_rate=48000}
    mkdir -p "$CL_MEDIA"
    local args=(-v error -y -f lavfi -i "$video:duration=$secs")
    [[ $audio != none ]] && args+=(-f lavfi -i "$audio:duration=$secs" -c:a aac -shortest)
    ffmpeg "${args[@]}" -c:v libx264 -preset ultrafast -g 25 -pix_fmt yuv420p "$CL_MEDIA/$name" ||
        cl_fail "ffmpeg $name"
}

# cl_submit I JSON: submits to node I, prints the id.
cl_submit() {
    local out
    out=$(curl -sS -X POST -H 'Content-Type: application/json' -d "$2" "$(cl_api "$1")/api/v1/compositions") ||
        cl_fail "submit to node $1: $out"
    jq -er .id <<<"$out" || cl_fail "submit to node $1: $out"
}

# cl_get I ID [PATH]: GET /api/v1/compositions/ID[/PATH] from node I.
cl_get() { curl -sS "$(cl_api "$1")/api/v1/compositions/$2${3:+/$3}"; }

# cl_wait_status I ID STATUS SECONDS: waits until ID is STATUS (fails early
# on another terminal status).
cl_wait_status() {
    local i=$1 id=$2 want=$3 secs=$4 t0 s
    t0=$(cfnet_now_ms)
    while (($(cfnet_now_ms) - t0 < secs * 1000)); do
        s=$(cl_get "$i" "$id" | jq -r .status)
        [[ $s == "$want" ]] && return 0
        [[ $s == completed || $s == failed || $s == cancelled ]] &&
            cl_fail "$id is $s, not $want: $(cl_get "$i" "$id")"
        sleep 0.2
    done
    cl_fail "$id did not become $want in $secs s: $(cl_get "$i" "$id")"
}

# cl_segment_nodes I ID: the distinct nodes that encoded ID's segments.
cl_segment_nodes() {
    cl_get "$1" "$2" segments | jq -r '[.items[] | select(.kind == "segment" or .kind == null) | .node_id] | unique | .[]'
}

# cl_frames FILE: decoded video frames.
cl_frames() {
    ffprobe -v error -select_streams v:0 -count_frames -show_entries stream=nb_read_frames -of csv=p=0 "$1"
}
