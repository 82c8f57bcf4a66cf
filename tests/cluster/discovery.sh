# Must show: 3 nodes discover each other by beacons within 3 s, and by the
# registry alone (no beacon interface) within 5 s.
source "$CF_TESTS_DIR/cluster/lib.bash"

cfnet_net 3 || exit $?

# known_all NODES...: each of NODES sees two peers alive and has their HELLO
# (capabilities), which comes over the CURVE link and may trail the first
# message there by a HELLO retry.
known_all() {
    local i
    for i in "$@"; do
        cfnet_jq "$i" '[.peers[] | select(.state == "alive")] |
            length == 2 and all(.capabilities.cores >= 1)' >/dev/null || return 1
    done
}

# measure LIMIT_MS SOURCE: starts nodes 1..3 (already configured by the
# caller), waits until every node sees the two others alive with their
# capabilities, each learned only through SOURCE, and fails past LIMIT_MS
# after all three are up.
measure() {
    local limit=$1 source=$2 i
    cfnet_wait 30 all_ready 1 2 3 || cl_fail "nodes did not start"
    local t0
    t0=$(cfnet_now_ms)
    cfnet_wait 10 known_all 1 2 3 || cl_fail "the nodes did not all see each other ($source)"
    local elapsed=$(($(cfnet_now_ms) - t0))
    echo "discovery by $source: $elapsed ms after all nodes were up"
    ((elapsed <= limit)) || cl_fail "discovery by $source took $elapsed ms (limit $limit ms)"
    for i in 1 2 3; do
        local sources
        sources=$(cfnet_jq "$i" '[.peers[].discovered_by[]] | unique | join(",")')
        [[ $sources == "$source" ]] || cl_fail "node $i learned peers through '$sources', not only $source"
    done
}

# 1. Beacons only: the registry is not read (--discovery beacon).
for i in 1 2 3; do cfnet_start "$i" "${CL_TIMING[@]}" --discovery beacon; done
measure 3000 beacon
for i in 1 2 3; do
    [[ $(counter "$i" beacons_accepted) -gt 0 ]] || cl_fail "node $i accepted no beacon"
    [[ $(counter "$i" beacons_rejected) == 0 ]] || cl_fail "node $i rejected a beacon of its cluster"
done
cl_finish # every node leaves cleanly

# 2. The registry alone: no beacon interface at all.
CFNET_BEACONS=0
for i in 1 2 3; do cfnet_start "$i" "${CL_TIMING[@]}"; done
measure 5000 registry
for i in 1 2 3; do
    [[ $(counter "$i" beacons_sent) == 0 ]] || cl_fail "node $i sent beacons without --beacon-iface"
    grep -q "beacons=off" "$CFNET_DIR/h$i/out" || cl_fail "node $i does not say beacons are off"
done
cl_finish
echo "ok"
