# Must show: the lease row reset to a lower epoch while the cluster runs (a
# point-in-time restore, a lossy failover) leaves the cluster with a
# coordinator within two lease TTLs, at an epoch strictly higher than any
# seen before; two coordinators never share an epoch.
#
# Twice: the row alone goes back (its holder and expiry kept), then the
# whole lease and the published view go back to a free lease at epoch 0, so
# that only what the nodes themselves saw remembers the epochs in use.
source "$CF_TESTS_DIR/cluster/lib.bash"

cfnet_up 3 "${CL_TIMING[@]}" || exit $?
cfnet_wait 30 all_ready 1 2 3 || cl_fail "nodes did not start"
cfnet_wait 10 all_see 2 1 2 3 || cl_fail "the nodes did not find each other"
cfnet_wait 10 one_coordinator 1 2 3 || cl_fail "no coordinator"

# highest_seen: the highest epoch any node or the lease row shows.
highest_seen() {
    local i e max
    max=$(cfnet_psql -c "SELECT epoch FROM coordinator_lease")
    for i in 1 2 3; do
        e=$(epoch "$i")
        ((e > max)) && max=$e
    done
    echo "$max"
}

# serving ABOVE: one node is coordinator at an epoch above ABOVE, the lease
# row names it at that epoch, and every node follows it.
serving() {
    local above=$1 c id e i
    c=$(coordinators 1 2 3)
    [[ $(wc -w <<<"$c") == 1 ]] || return 1
    id=$(node_id "$c")
    e=$(epoch "$c")
    ((e > above)) || return 1
    [[ $(cfnet_psql -c "SELECT holder || ' ' || epoch FROM coordinator_lease") == "$id $e" ]] ||
        return 1
    for i in 1 2 3; do
        [[ $(cfnet_jq "$i" '.coordinator + " " + (.epoch|tostring)') == "$id $e" ]] || return 1
    done
}

# no_shared_epoch: at most one node claims each epoch, sampled (fails the test).
no_shared_epoch() {
    local i claims=()
    for i in 1 2 3; do
        [[ $(role "$i" 2>/dev/null) == coordinator ]] && claims+=("$(epoch "$i")")
    done
    [[ $(printf '%s\n' "${claims[@]}" | sort | uniq -d | wc -l) == 0 ]] ||
        cl_fail "two coordinators share an epoch: ${claims[*]}"
}

# A first failover, so that epochs 1 and 2 have both been used.
first=$(coordinators 1 2 3)
cfnet_kill "$first" TERM
wait "$(cfnet_pid "$first")" 2>/dev/null
coordinator_from() { # coordinator_from EPOCH: some node coordinates at EPOCH or above
    local i
    for i in 1 2 3; do
        [[ $i != "$first" ]] && cfnet_jq "$i" "select(.role == \"coordinator\" and .epoch >= $1)" &&
            return 0
    done
    return 1
}
cfnet_wait 10 coordinator_from 2 || cl_fail "no coordinator after the first one left"
cfnet_start "$first" "${CL_TIMING[@]}"
cfnet_wait 30 all_ready 1 2 3 || cl_fail "node $first did not start again"
cfnet_wait 15 all_see 2 1 2 3 || cl_fail "node $first did not rejoin"
cfnet_wait 10 serving 1 || cl_fail "the cluster does not follow one coordinator"

# check_reset NAME SQL: resets the row with SQL; a coordinator must serve
# above every epoch seen before, within two TTLs.
check_reset() {
    local name=$1 sql=$2 before t0 limit elapsed
    before=$(highest_seen)
    echo "$name: highest epoch seen $before; $sql"
    cfnet_psql -c "$sql" >/dev/null || cl_fail "cannot reset the lease row"
    t0=$(cfnet_now_ms)
    limit=$((2 * $(cfnet_ms "$CL_TTL")))
    while (($(cfnet_now_ms) - t0 <= limit)); do
        no_shared_epoch
        serving "$before" && break
        sleep 0.05
    done
    elapsed=$(($(cfnet_now_ms) - t0))
    serving "$before" || cl_fail "$name: no coordinator above epoch $before within $limit ms"
    local c
    c=$(coordinators 1 2 3)
    echo "$name: node $c coordinates at epoch $(epoch "$c"), $elapsed ms after the reset (limit $limit ms)"
    # And it stays so: the lease is renewed, not lost again.
    for _ in $(seq 40); do
        no_shared_epoch
        sleep 0.05
    done
    serving "$before" || cl_fail "$name: the coordinator did not keep serving"
}

check_reset "row reset" "UPDATE coordinator_lease SET epoch = 1"
check_reset "lossy failover" "UPDATE coordinator_lease SET epoch = 0, holder = NULL,
    holder_token = NULL, expires_at = '-infinity'; UPDATE cluster_view SET epoch = 0"
cl_finish
echo "ok"
