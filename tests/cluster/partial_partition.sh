# Must show: a node cut off from its peers but not from Postgres is handled
# one consistent way, the one documented in proto/PROTOCOL.md: Postgres is
# the only judge of membership and of the lease. The cut-off node is the
# coordinator here (the case with the most at stake):
#   - it keeps the lease (it still renews it in Postgres): nobody else is
#     elected, everyone keeps following it;
#   - every node's nodes API shows every node "up" (liveness, from the
#     registry by the database clock), with the broken control links shown
#     as links ("state": "gone"), never as membership;
#   - Postgres records no departure, and the published view lists all three;
# and once it loses Postgres too, it is gone by the same rule: a new
# coordinator is elected and records the departure.
source "$CF_TESTS_DIR/cluster/lib.bash"
CFNET_API=1

cfnet_up 3 "${CL_TIMING[@]}" || exit $?
cfnet_wait 30 all_ready 1 2 3 || cl_fail "nodes did not start"
cfnet_wait 15 all_see 2 1 2 3 || cl_fail "the nodes did not find each other"
cfnet_wait 10 one_coordinator 1 2 3 || cl_fail "no coordinator"
c=$(coordinators 1 2 3)
c_id=$(node_id "$c")
c_epoch=$(epoch "$c")
others=()
for i in 1 2 3; do [[ $i != "$c" ]] && others+=("$i"); done

# api I: node I's GET /api/v1/cluster, from inside its namespace.
api() {
    nsenter --net="/run/netns/$(cfnet_ns "$1")" -- \
        curl -sf --max-time 3 "http://$(cfnet_addr "$1"):8080/api/v1/cluster"
}
# api_shows I FILTER: node I's API answers and jq FILTER holds on it.
api_shows() { api "$1" | jq -e "$2" >/dev/null; }
for i in 1 2 3; do cfnet_wait 30 api "$i" || cl_fail "node $i does not serve its API"; done

# liveness_all_up I: node I's API shows all three nodes up.
liveness_all_up() {
    local body
    body=$(api "$1") || return 1
    [[ $(jq '[.nodes[] | select(.liveness == "up")] | length' <<<"$body") == 3 ]]
}
for i in 1 2 3; do
    cfnet_wait 15 liveness_all_up "$i" || cl_fail "node $i does not show all nodes up: $(api "$i")"
done
mark=$(cfnet_psql -c "SELECT now()")

echo "coordinator: node $c ($c_id), epoch $c_epoch; cutting it off from its peers, not from Postgres"
cut() { # cut I J: no traffic between hosts I and J (each drops the other's address)
    nsenter --net="/run/netns/$(cfnet_ns "$1")" -- ip route add blackhole "$(cfnet_addr "$2")/32"
    nsenter --net="/run/netns/$(cfnet_ns "$2")" -- ip route add blackhole "$(cfnet_addr "$1")/32"
}
uncut() {
    nsenter --net="/run/netns/$(cfnet_ns "$1")" -- ip route del blackhole "$(cfnet_addr "$2")/32"
    nsenter --net="/run/netns/$(cfnet_ns "$2")" -- ip route del blackhole "$(cfnet_addr "$1")/32"
}
for i in "${others[@]}"; do cut "$c" "$i" || cl_fail "cannot cut $c from $i"; done

# The links go: each side sees the other's control link gone.
link_gone() { # link_gone I ID: node I's link to node ID is gone
    cfnet_jq "$1" ".peers[] | select(.id == \"$2\") | .state == \"gone\"" | grep -q true
}
for i in "${others[@]}"; do
    cfnet_wait 15 link_gone "$i" "$c_id" || cl_fail "node $i still has a link to node $c"
    cfnet_wait 15 link_gone "$c" "$(node_id "$i")" || cl_fail "node $c still has a link to node $i"
done
echo "links to node $c down; watching for $((3 * CL_TTL)) s"

# For three lease TTLs: the same coordinator, at the same epoch, followed by
# all, and every node's API says all three are up.
t0=$(cfnet_now_ms)
while (($(cfnet_now_ms) - t0 < 3000 * CL_TTL)); do
    [[ $(coordinators 1 2 3) == "$c" ]] || cl_fail "the coordinator changed: $(coordinators 1 2 3)"
    for i in 1 2 3; do
        [[ $(cfnet_jq "$i" '.coordinator + " " + (.epoch|tostring)') == "$c_id $c_epoch" ]] ||
            cl_fail "node $i follows $(cfnet_jq "$i" '.coordinator + " " + (.epoch|tostring)')"
    done
    sleep 0.2
done
for i in 1 2 3; do
    body=$(api "$i") || cl_fail "node $i's API does not answer"
    [[ $(jq '[.nodes[] | select(.liveness == "up")] | length' <<<"$body") == 3 ]] ||
        cl_fail "node $i's API does not show all three nodes up: $body"
done
# Node 1's API, for the record: membership up, links as they are.
api "${others[0]}" | jq -c '[.nodes[] | {id, role, liveness, link: .state}]'
# Postgres: the lease and the registry agree.
[[ $(cfnet_psql -c "SELECT holder || ' ' || epoch FROM coordinator_lease") == "$c_id $c_epoch" ]] ||
    cl_fail "the lease moved"
[[ $(cfnet_psql -c "SELECT count(*) FROM nodes WHERE cf_node_liveness(state, last_seen, grace_ms) = 'up'") == 3 ]] ||
    cl_fail "the registry does not judge all three up"
[[ $(cfnet_psql -c "SELECT count(*) FROM nodes WHERE gone_at > '$mark'") == 0 ]] ||
    cl_fail "a departure was recorded: $(cfnet_psql -c "SELECT id, gone_at, gone_epoch FROM nodes WHERE gone_at > '$mark'")"
[[ $(cfnet_psql -c "SELECT jsonb_array_length(members) || ' ' || epoch FROM cluster_view") == "3 $c_epoch" ]] ||
    cl_fail "the published view is not all three at epoch $c_epoch: $(cfnet_psql -c "SELECT members FROM cluster_view")"

# Healed: the links come back; nothing else changed.
for i in "${others[@]}"; do uncut "$c" "$i"; done
cfnet_wait 15 all_see 2 1 2 3 || cl_fail "the links did not come back"
[[ $(cfnet_psql -c "SELECT holder || ' ' || epoch FROM coordinator_lease") == "$c_id $c_epoch" ]] ||
    cl_fail "the lease moved"

# Cut off from Postgres too (its link down): gone by the same rule.
echo "node $c loses Postgres too"
cfnet_partition "$c"
cfnet_wait $((2 * CL_TTL + 4)) bash -c "
    for i in ${others[*]}; do
        jq -e 'select(.role == \"coordinator\" and .epoch > $c_epoch)' $CFNET_DIR/h\$i/status.json && exit 0
    done; exit 1" || cl_fail "no new coordinator once node $c lost Postgres"
new=$(coordinators "${others[@]}")
new_epoch=$(epoch "$new")
for i in "${others[@]}"; do
    cfnet_wait 15 api_shows "$i" ".nodes[] | select(.id == \"$c_id\") | .liveness == \"gone\"" ||
        cl_fail "node $i's API does not show node $c gone"
done
recorded() { [[ $(cfnet_psql -c "SELECT gone_epoch FROM nodes WHERE id = '$c_id'") == "$new_epoch" ]]; }
cfnet_wait 15 recorded || cl_fail "the new coordinator did not record node $c's departure"
echo "node $new coordinates at epoch $new_epoch and recorded node $c's departure"
cfnet_heal "$c"
cfnet_wait 20 bash -c "jq -e '.role == \"worker\" and .epoch == $new_epoch' $(cfnet_status "$c")" ||
    cl_fail "node $c does not follow the new coordinator"
# These nodes run the REST API and the renderer too, whose shutdown (not
# the cluster's leave, which cl_finish bounds to 2 s elsewhere) may take
# longer: stop them here, each with a clean exit.
for i in 1 2 3; do
    pid=$(cfnet_pid "$i")
    kill -TERM "$pid"
    wait "$pid" || cl_fail "node $i exited with status $? after SIGTERM"
done
cl_finish
echo "ok"
