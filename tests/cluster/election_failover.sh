# Must show: exactly one coordinator at any time; kill -9 of the
# coordinator: a new one within lease TTL + 2 s, with a higher epoch.
source "$CF_TESTS_DIR/cluster/lib.bash"

cfnet_up 3 "${CL_TIMING[@]}" || exit $?
cfnet_wait 30 all_ready 1 2 3 || cl_fail "nodes did not start"
cfnet_wait 10 all_see 2 1 2 3 || cl_fail "the nodes did not find each other"
cfnet_wait 10 one_coordinator 1 2 3 || cl_fail "no coordinator"

# sample NODES...: fails if more than one of NODES claims to be coordinator.
max_seen=0
sample() {
    local n
    n=$(coordinators "$@" | wc -w)
    ((n > max_seen)) && max_seen=$n
    ((n <= 1)) || cl_fail "$n coordinators at once: $(coordinators "$@")"
}
for _ in $(seq 20); do sample 1 2 3; sleep 0.05; done

old=$(coordinators 1 2 3)
old_epoch=$(epoch "$old")
old_id=$(node_id "$old")
survivors=()
for i in 1 2 3; do [[ $i != "$old" ]] && survivors+=("$i"); done
# Every node agrees on who coordinates, and at which epoch.
for i in "${survivors[@]}"; do
    [[ $(cfnet_jq "$i" .coordinator) == "$old_id" ]] || cl_fail "node $i names another coordinator"
    [[ $(epoch "$i") == "$old_epoch" ]] || cl_fail "node $i is at another epoch"
done
[[ $(cfnet_psql -c "SELECT holder || ' ' || epoch FROM coordinator_lease") == "$old_id $old_epoch" ]] ||
    cl_fail "the lease row does not match node $old"

echo "coordinator: node $old ($old_id), epoch $old_epoch; kill -9"
t0=$(cfnet_now_ms)
cfnet_kill "$old" KILL
limit=$(($(cfnet_ms "$CL_TTL") + 2000))
new=
while (($(cfnet_now_ms) - t0 <= limit)); do
    sample "${survivors[@]}"
    new=$(coordinators "${survivors[@]}")
    if [[ -n $new ]] && (($(epoch "$new") > old_epoch)); then break; fi
    new=
    sleep 0.05
done
elapsed=$(($(cfnet_now_ms) - t0))
[[ -n $new ]] || cl_fail "no new coordinator within $limit ms (TTL + 2 s)"
new_epoch=$(epoch "$new")
new_id=$(node_id "$new")
echo "new coordinator: node $new, epoch $new_epoch, $elapsed ms after kill -9 (limit $limit ms)"
((new_epoch > old_epoch)) || cl_fail "the new epoch $new_epoch is not above $old_epoch"

# It holds the lease in Postgres, and the other survivor follows it.
[[ $(cfnet_psql -c "SELECT holder || ' ' || epoch FROM coordinator_lease") == "$new_id $new_epoch" ]] ||
    cl_fail "the lease row does not name node $new at epoch $new_epoch"
for i in "${survivors[@]}"; do
    cfnet_wait 10 bash -c "[[ \$(jq -r '.coordinator + \" \" + (.epoch|tostring)' $(cfnet_status "$i")) == '$new_id $new_epoch' ]]" ||
        cl_fail "node $i does not follow the new coordinator"
done
# The dead node is gone for the survivors (its link, and its liveness as
# Postgres judges it), and the new coordinator recorded its departure in the
# registry under its own epoch.
for i in "${survivors[@]}"; do
    cfnet_wait 15 bash -c "jq -e '.peers[] | select(.id == \"$old_id\") | .state == \"gone\" and .liveness == \"gone\"' $(cfnet_status "$i")" ||
        cl_fail "node $i does not see the old coordinator gone"
done
recorded_gone() {
    [[ $(cfnet_psql -c "SELECT cf_node_liveness(state, last_seen, grace_ms) || ' ' || gone_epoch FROM nodes WHERE id = '$old_id'") == "gone $new_epoch" ]]
}
cfnet_wait 15 recorded_gone ||
    cl_fail "the registry does not record the old coordinator gone at epoch $new_epoch"
# Still exactly one, for a while.
for _ in $(seq 30); do sample "${survivors[@]}"; sleep 0.05; done
one_coordinator "${survivors[@]}" || cl_fail "not exactly one coordinator at the end"
cl_finish
echo "ok: never more than $max_seen coordinator at once"
