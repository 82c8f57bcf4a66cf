# Must show: partition the coordinator: the others elect a new one; when the
# old one's link returns, every write it attempts with the stale epoch is
# rejected. Checked in Postgres and with the node's rejection counter.
#
# The coordinator writes to Postgres all the time: it publishes the
# membership (cluster_view) every second and records departures (nodes.state
# = gone), each write carrying its epoch. Cut off, it goes on deciding —
# its peers fall silent, so it marks them gone — but nothing reaches the
# database. By the time its link returns another node holds the lease at a
# higher epoch, and the queued writes, sent again, must all be refused.
source "$CF_TESTS_DIR/cluster/lib.bash"
CL_TTL=4 CL_GRACE=1 CL_HEARTBEAT=0.25
CL_TIMING=(--lease-ttl "$CL_TTL" --peer-grace "$CL_GRACE" --heartbeat-interval "$CL_HEARTBEAT")

cfnet_up 3 "${CL_TIMING[@]}" || exit $?
cfnet_wait 30 all_ready 1 2 3 || cl_fail "nodes did not start"
cfnet_wait 10 all_see 2 1 2 3 || cl_fail "the nodes did not find each other"
cfnet_wait 10 one_coordinator 1 2 3 || cl_fail "no coordinator"
old=$(coordinators 1 2 3)
old_id=$(node_id "$old")
old_epoch=$(epoch "$old")
cl_audit_install || cl_fail "cannot install the write audit"
cfnet_wait 15 bash -c "[[ \$(jq .counters.fenced_writes_applied $(cfnet_status "$old")) -ge 1 ]]" ||
    cl_fail "the coordinator made no write"
others=()
for i in 1 2 3; do [[ $i != "$old" ]] && others+=("$i"); done
echo "coordinator: node $old ($old_id), epoch $old_epoch; partitioning it"

cfnet_partition "$old"
t0=$(cfnet_now_ms)
mark=$(cl_audit_mark)

# The others elect a new coordinator with a higher epoch.
new=
cfnet_wait $((CL_TTL + 4)) bash -c "
    for i in ${others[*]}; do
        jq -e 'select(.role == \"coordinator\" and .epoch > $old_epoch)' $CFNET_DIR/h\$i/status.json && exit 0
    done; exit 1" || cl_fail "the others elected no new coordinator"
new=$(coordinators "${others[@]}")
new_id=$(node_id "$new")
new_epoch=$(epoch "$new")
echo "new coordinator: node $new, epoch $new_epoch, $(($(cfnet_now_ms) - t0)) ms after the partition"

# Cut off, the old coordinator stepped down on its own (its lease could not
# be renewed), yet writes it made as coordinator are still queued.
cfnet_wait 15 bash -c "jq -e '.role == \"worker\"' $(cfnet_status "$old")" ||
    cl_fail "the partitioned coordinator still claims the role"
cfnet_wait 15 bash -c "jq -e '.fence.pending >= 1' $(cfnet_status "$old")" ||
    cl_fail "the partitioned coordinator has no write waiting"
# Writes are sent in order and the oldest waiting one is blocked: nothing
# it issued after the cut can have been applied, so this count is final.
applied_before=$(counter "$old" fenced_writes_applied)
rejected_before=$(counter "$old" fenced_writes_rejected)
pending=$(cfnet_jq "$old" .fence.pending)
grep -q "gone: no heartbeat" "$CFNET_DIR/h$old/err" ||
    cl_fail "the partitioned coordinator did not see its peers go"
echo "old coordinator: $pending write(s) waiting, $applied_before applied before the partition"
sleep 1

cfnet_heal "$old"
echo "link back"
cfnet_wait 15 bash -c "jq -e '.fence.pending == 0 and .counters.fenced_writes_rejected > $rejected_before' $(cfnet_status "$old")" ||
    cl_fail "the old coordinator's waiting writes were not refused"
# Every write it attempted since: refused, none applied.
applied_after=$(counter "$old" fenced_writes_applied)
rejected_after=$(counter "$old" fenced_writes_rejected)
[[ $applied_after == "$applied_before" ]] ||
    cl_fail "a write of the deposed coordinator was applied ($applied_before -> $applied_after)"
echo "old coordinator: $((rejected_after - rejected_before)) stale write(s) refused, none applied"
grep -q "refused a .* write of epoch $old_epoch" "$CFNET_DIR/h$old/err" ||
    cl_fail "the refusal is not logged"

# Postgres: the lease and the published view belong to the new epoch; no
# row carries a departure recorded under the old epoch, while the new
# coordinator's record of the old one's departure went through.
[[ $(cfnet_psql -c "SELECT holder || ' ' || epoch FROM coordinator_lease") == "$new_id $new_epoch" ]] ||
    cl_fail "the lease is not the new coordinator's"
view=$(cfnet_psql -c "SELECT coordinator || ' ' || epoch FROM cluster_view")
[[ $view == "$new_id $new_epoch" ]] || cl_fail "cluster_view was written by '$view'"
# Postgres' own record of every fenced write since the cut (a view the new
# coordinator republishes could hide one): none carried the old epoch.
[[ $(cl_audit_count "$mark" "$old_epoch") == 0 ]] ||
    cl_fail "Postgres recorded a write of epoch $old_epoch after the partition: $(cfnet_psql -c "SELECT * FROM cf_test_audit WHERE id > $mark AND epoch = $old_epoch")"
(($(cl_audit_count "$mark" "$new_epoch") > 0)) || cl_fail "the audit saw no write of the new coordinator"
stale=$(cfnet_psql -c "SELECT count(*) FROM nodes WHERE gone_epoch = $old_epoch")
[[ $stale == 0 ]] || cl_fail "$stale registry row(s) were changed under the stale epoch"
[[ $(cfnet_psql -c "SELECT gone_epoch FROM nodes WHERE id = '$old_id'") == "$new_epoch" ]] ||
    cl_fail "the new coordinator's record of the departure is missing"

# The old node follows the new coordinator and rejoins as a worker.
cfnet_wait 10 bash -c "jq -e '.role == \"worker\" and .epoch == $new_epoch and .coordinator == \"$new_id\"' $(cfnet_status "$old")" ||
    cl_fail "the old coordinator does not follow the new one"
cfnet_wait 10 all_see 2 1 2 3 || cl_fail "the cluster did not heal"
one_coordinator 1 2 3 || cl_fail "not exactly one coordinator after healing"
cl_finish
echo "ok"
