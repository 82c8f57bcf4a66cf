# Must show: partition the coordinator: the others elect a new one; when the
# old one's link returns, nothing it decided under the stale epoch reaches
# Postgres. Checked in Postgres and with the node's counters.
#
# The coordinator writes to Postgres all the time: it publishes the
# membership (cluster_view) every second and records departures (the
# liveness sweep), each write carrying its epoch. Cut off, it goes on
# deciding, but nothing reaches the database, and its writes live only as
# long as its lease: once the lease's deadline passes they are dropped
# (fenced_writes_dropped), never sent late. By the time its link returns
# another node holds the lease at a higher epoch; nothing of the old epoch
# may land.
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
# be renewed), and the writes it queued as coordinator were dropped when its
# lease ran out: none is left to arrive late.
cfnet_wait 15 bash -c "jq -e '.role == \"worker\"' $(cfnet_status "$old")" ||
    cl_fail "the partitioned coordinator still claims the role"
cfnet_wait 15 bash -c "jq -e '.fence.pending == 0 and .counters.fenced_writes_dropped >= 1' $(cfnet_status "$old")" ||
    cl_fail "the partitioned coordinator's writes were not dropped with its lease"
applied_before=$(counter "$old" fenced_writes_applied)
dropped=$(counter "$old" fenced_writes_dropped)
grep -q "peer .* gone: no heartbeat" "$CFNET_DIR/h$old/err" ||
    cl_fail "the partitioned coordinator did not see its peers go"
grep -Eq "(gave up|dropped) a [a-z]+ write of epoch $old_epoch" "$CFNET_DIR/h$old/err" ||
    cl_fail "the dropped writes are not logged"
echo "old coordinator: $dropped write(s) dropped with its lease, $applied_before applied before the partition"
sleep 1

cfnet_heal "$old"
echo "link back"
sleep 2
# Nothing it attempted since was applied.
applied_after=$(counter "$old" fenced_writes_applied)
[[ $applied_after == "$applied_before" ]] ||
    cl_fail "a write of the deposed coordinator was applied ($applied_before -> $applied_after)"

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
