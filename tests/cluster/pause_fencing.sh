# A coordinator that is paused (SIGSTOP: a long GC pause, a frozen VM) wakes
# up after another node took over. It must not act as coordinator again:
# the others keep following the new one (its LEADER messages, if it sends
# any, carry the old epoch and are ignored), it steps down at once, and no
# write it makes under its old epoch reaches Postgres.
source "$CF_TESTS_DIR/cluster/lib.bash"

cfnet_up 3 "${CL_TIMING[@]}" || exit $?
cfnet_wait 30 all_ready 1 2 3 || cl_fail "nodes did not start"
cfnet_wait 10 all_see 2 1 2 3 || cl_fail "the nodes did not find each other"
cfnet_wait 10 one_coordinator 1 2 3 || cl_fail "no coordinator"
old=$(coordinators 1 2 3)
old_id=$(node_id "$old")
old_epoch=$(epoch "$old")
cl_audit_install || cl_fail "cannot install the write audit"
audit_saw() { (($(cfnet_psql -c "SELECT count(*) FROM cf_test_audit WHERE epoch = $1") > 0)); }
cfnet_wait 15 audit_saw "$old_epoch" ||
    cl_fail "the audit saw no write of the coordinator"
others=()
for i in 1 2 3; do [[ $i != "$old" ]] && others+=("$i"); done

echo "coordinator: node $old, epoch $old_epoch; SIGSTOP"
cfnet_pause "$old"
mark=$(cl_audit_mark)
cfnet_wait $((CL_TTL + 2)) bash -c "
    for i in ${others[*]}; do
        jq -e 'select(.role == \"coordinator\" and .epoch > $old_epoch)' $CFNET_DIR/h\$i/status.json && exit 0
    done; exit 1" || cl_fail "no new coordinator while node $old was paused"
new=$(coordinators "${others[@]}")
new_id=$(node_id "$new")
new_epoch=$(epoch "$new")
echo "new coordinator: node $new, epoch $new_epoch"
cfnet_wait 15 all_see 1 "${others[@]}" || cl_fail "the others do not see each other"
applied=$(counter "$old" fenced_writes_applied)

resumed_at=$(date +%s%3N) # wall clock, as in the node's log
cfnet_resume "$old"
t0=$(cfnet_now_ms)
stepped_down=
# For 3 s: the others never follow the old coordinator again, and at most
# one node claims the current epoch.
while (($(cfnet_now_ms) - t0 < 3000)); do
    for i in "${others[@]}"; do
        [[ $(cfnet_jq "$i" .coordinator) == "$new_id" ]] ||
            cl_fail "node $i follows $(cfnet_jq "$i" .coordinator), not the new coordinator"
    done
    claims=0
    for i in 1 2 3; do
        cfnet_jq "$i" "select(.role == \"coordinator\" and .epoch >= $new_epoch)" >/dev/null &&
            claims=$((claims + 1))
    done
    ((claims <= 1)) || cl_fail "$claims nodes claim epoch $new_epoch"
    sleep 0.05
done
[[ $(role "$old") == worker ]] || cl_fail "the old coordinator did not step down"
# When it stepped down, by its own log (the sampling above is too coarse).
# Log lines start with an ISO 8601 UTC timestamp, which sorts as text.
resumed_iso=$(date -u -d "@${resumed_at:0:-3}.${resumed_at: -3}" +%Y-%m-%dT%H:%M:%S.%3NZ)
line=$(awk -v t="$resumed_iso" '$1 >= t && /node: role=worker epoch=[0-9]+ / { print; exit }' \
    "$CFNET_DIR/h$old/err")
[[ -n $line ]] || cl_fail "the old coordinator did not log its step-down"
stepped_down=$(($(date -d "${line%% *}" +%s%3N) - resumed_at))
echo "old coordinator stepped down $stepped_down ms after waking up"
((stepped_down <= 1000)) || cl_fail "stepping down took $stepped_down ms"
cfnet_wait 15 bash -c "jq -e '.fence.pending == 0' $(cfnet_status "$old")" ||
    cl_fail "the old coordinator's writes are still pending"
[[ $(counter "$old" fenced_writes_applied) == "$applied" ]] ||
    cl_fail "a write of the woken coordinator was applied"
# Postgres' own record: after the pause, no write with the old epoch landed
# (not even one the new coordinator's next publication overwrote), while the
# new coordinator's did.
[[ $(cl_audit_count "$mark" "$old_epoch") == 0 ]] ||
    cl_fail "Postgres recorded a write of epoch $old_epoch after the pause: $(cfnet_psql -c "SELECT * FROM cf_test_audit WHERE id > $mark AND epoch = $old_epoch")"
(($(cl_audit_count "$mark" "$new_epoch") > 0)) || cl_fail "the audit saw no write of the new coordinator"
[[ $(cfnet_psql -c "SELECT holder || ' ' || epoch FROM coordinator_lease") == "$new_id $new_epoch" ]] ||
    cl_fail "the lease moved"
[[ $(cfnet_psql -c "SELECT coordinator || ' ' || epoch FROM cluster_view") == "$new_id $new_epoch" ]] ||
    cl_fail "cluster_view is not the new coordinator's"
cfnet_wait 15 bash -c "jq -e '.coordinator == \"$new_id\" and .epoch == $new_epoch' $(cfnet_status "$old")" ||
    cl_fail "the old coordinator does not follow the new one"
stale=0
for i in "${others[@]}"; do stale=$((stale + $(counter "$i" messages_stale_epoch))); done
cl_finish
echo "ok: $stale stale-epoch message(s) from the woken node ignored," \
    "$(counter "$old" fenced_writes_rejected) of its write(s) refused"
