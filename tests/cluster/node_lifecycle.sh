# Must show: `clipfarm node` prints (and logs) its id, role, epoch, peers and
# capabilities; SIGTERM leaves the cluster cleanly (lease released if held)
# within 2 s — also when Postgres and the peers cannot be reached.
source "$CF_TESTS_DIR/cluster/lib.bash"

cfnet_net 3 || exit $?
# The default lease TTL (5 s): a prompt takeover shows the lease was
# released, not left to expire.
cfnet_start 1 --heartbeat-interval 0.25 --peer-grace 1.5 --tag gpu --tag site=lab --slots 2
cfnet_start 2 --heartbeat-interval 0.25 --peer-grace 1.5
cfnet_wait 30 all_ready 1 2 || cl_fail "nodes did not start"
cfnet_wait 10 one_coordinator 1 2 || cl_fail "no coordinator"
# Node 3 joins later, so the coordinator is node 1 or 2.
cfnet_start 3 --heartbeat-interval 0.25 --peer-grace 1.5
cfnet_wait 30 ready 3 || cl_fail "node 3 did not start"
cfnet_wait 10 all_see 2 1 2 3 || cl_fail "the nodes did not find each other"

id1=$(node_id 1) id2=$(node_id 2) id3=$(node_id 3)
[[ $(sed -n 's/^node-id = //p' "$CFNET_DIR/h1/data/identity") == "$id1" ]] ||
    cl_fail "node 1's id is not the one in its identity file"
[[ $(stat -c %a "$CFNET_DIR/h1/data/identity") == 600 ]] || cl_fail "the identity file is not 0600"

# What node 1 prints: who it is and where, its capabilities once measured,
# and its role, epoch, coordinator and peers.
out=$CFNET_DIR/h1/out err=$CFNET_DIR/h1/err
addr1=$(cfnet_addr 1)
grep -qE "^node $id1: control=tcp://$addr1:7070 http=http://$addr1:8080 key=.{40} beacons=cf0 registry=on$" "$out" ||
    cl_fail "node 1 does not print its id and endpoints"
cfnet_wait 20 grep -qE "^node $id1: capabilities: cores=[0-9]+ memory=[0-9]+MB slots=2 encoders=.*libx264\([0-9.]+ fps\).* tags=gpu,site=lab$" "$out" ||
    cl_fail "node 1 does not print its measured capabilities"
coordinator=$(cfnet_jq 1 .coordinator)
epoch=$(epoch 1)
peers="peers=2 \[($id2,$id3|$id3,$id2)\]"
grep -qE "^node $id1: role=(coordinator|worker) epoch=$epoch coordinator=$coordinator $peers$" "$out" ||
    cl_fail "node 1 does not print its role, epoch and peers"
# The same lines go to the log.
grep -qE "\[$id1\] node: role=(coordinator|worker) epoch=$epoch coordinator=$coordinator $peers" "$err" ||
    cl_fail "node 1 does not log its state"
grep -qE "\[$id1\] node: capabilities: cores=.* tags=gpu,site=lab" "$err" ||
    cl_fail "node 1 does not log its capabilities"
# Its peer learned those capabilities from its HELLO.
cfnet_wait 10 bash -c "jq -e '.peers[] | select(.id == \"$id1\") | .capabilities.tags == [\"gpu\", \"site=lab\"] and .capabilities.slots == 2 and (.capabilities.encoders | map(.name) | index(\"libx264\")) != null' $(cfnet_status 2)" ||
    cl_fail "node 2 does not know node 1's capabilities"

# stop I: SIGTERM; the node must be gone within 2 s, with exit status 0.
stop() {
    local pid t0 status
    pid=$(cfnet_pid "$1")
    t0=$(cfnet_now_ms)
    kill -TERM "$pid"
    wait "$pid"
    status=$?
    stopped_after=$(($(cfnet_now_ms) - t0))
    echo "node $1 stopped $stopped_after ms after SIGTERM, status $status"
    ((status == 0)) || cl_fail "node $1 exited with status $status"
    ((stopped_after <= 2000)) || cl_fail "node $1 took $stopped_after ms to leave"
}

# The coordinator leaves: its lease is released (not left to expire), its
# row says left, and another node takes over well inside the TTL.
c=$(coordinators 1 2)
rest=()
for i in 1 2 3; do [[ $i != "$c" ]] && rest+=("$i"); done
c_id=$(node_id "$c")
c_epoch=$(epoch "$c")
stop "$c"
lease=$(cfnet_psql -c "SELECT coalesce(holder::text, 'none') || ' ' || (expires_at <= now()) FROM coordinator_lease")
[[ $lease == "none true" || $lease == "$(node_id "${rest[0]}") false" ||
    $lease == "$(node_id "${rest[1]}") false" ]] || cl_fail "the lease was not released: '$lease'"
[[ $(cfnet_psql -c "SELECT state FROM nodes WHERE id = '$c_id'") == left ]] ||
    cl_fail "the registry row is not marked left"
grep -q "lease released (epoch $c_epoch)" "$CFNET_DIR/h$c/err" || cl_fail "no release logged"
grep -qE "role=worker epoch=$c_epoch coordinator=none peers=" "$CFNET_DIR/h$c/out" ||
    cl_fail "the leaving coordinator did not print its last state"
t0=$(cfnet_now_ms)
new_coordinator() { one_coordinator "${rest[@]}" && (($(epoch "$(coordinators "${rest[@]}")") > c_epoch)); }
cfnet_wait 10 new_coordinator || cl_fail "nobody took over after the release"
w=$(coordinators "${rest[@]}")
p=${rest[0]}
[[ $p == "$w" ]] && p=${rest[1]}
echo "node $w coordinator $(($(cfnet_now_ms) - t0)) ms later (lease TTL 5000 ms)"
for i in "${rest[@]}"; do
    cfnet_wait 10 bash -c "jq -e '.peers[] | select(.id == \"$c_id\") | .state == \"left\"' $(cfnet_status "$i")" ||
        cl_fail "node $i did not see node $c leave"
    grep -q "peer $c_id left: shutdown" "$CFNET_DIR/h$i/err" || cl_fail "the departure is not logged"
done

# Cut off from Postgres and its peers, a node still leaves within 2 s. It
# could tell nobody: its row is not "left" (the coordinator may have marked
# it gone meanwhile).
p_id=$(node_id "$p")
cfnet_partition "$p"
sleep 0.5
stop "$p"
[[ $(cfnet_psql -c "SELECT state FROM nodes WHERE id = '$p_id'") == @(up|gone) ]] ||
    cl_fail "node $p's row says left although Postgres was out of reach"

# The new coordinator leaves just as cleanly.
stop "$w"
[[ $(cfnet_psql -c "SELECT count(*) FROM nodes WHERE state = 'left'") == 2 ]] ||
    cl_fail "not every row is marked left"
[[ $(cfnet_psql -c "SELECT holder IS NULL FROM coordinator_lease") == t ]] ||
    cl_fail "the last coordinator kept the lease"
cl_finish
echo "ok"
