# Must show: a node with the wrong secret is never admitted: its beacons are
# counted as rejected and its connection attempts fail.
#
# Nodes 1-3 share the cluster secret; node 4 has another one and, to make it
# try, is told node 1's control endpoint and key (--peer). It learns nothing
# from beacons or the registry (their MACs fail under its secret), and node 1
# refuses its CURVE handshakes because its key came from neither path.
source "$CF_TESTS_DIR/cluster/lib.bash"

cfnet_net 4 || exit $?
for i in 1 2 3; do cfnet_start "$i" "${CL_TIMING[@]}"; done
cfnet_wait 30 all_ready 1 2 3 || cl_fail "nodes did not start"
cfnet_wait 10 all_see 2 1 2 3 || cl_fail "the good nodes did not find each other"

key1=$(cfnet_jq 1 .public_key) || cl_fail "no key for node 1"
"$CF_BIN" secret generate >"$CFNET_DIR/other-secret" && chmod 600 "$CFNET_DIR/other-secret"
CFNET_SECRET_FILE=$CFNET_DIR/other-secret cfnet_start 4 "${CL_TIMING[@]}" \
    --peer "$key1@$(cfnet_addr 1):7070"
cfnet_wait 30 ready 4 || cl_fail "node 4 did not start"
bad_id=$(node_id 4)
bad_key=$(cfnet_jq 4 .public_key)

# Long enough for many beacons, registry rounds and handshake retries.
cfnet_wait 10 bash -c "[[ \$(jq -r .counters.zap_denied $(cfnet_status 1)) -ge 3 ]]" ||
    cl_fail "node 1 did not refuse node 4's handshakes"
sleep 2

for i in 1 2 3; do
    # Never admitted: not a peer at all, the others still see exactly two.
    cfnet_jq "$i" "[.peers[] | select(.id == \"$bad_id\" or .public_key == \"$bad_key\")] | length == 0" \
        >/dev/null || cl_fail "node $i lists the node with the wrong secret"
    sees_all "$i" 2 || cl_fail "node $i lost its good peers"
    # Its beacons: dropped and counted.
    [[ $(counter "$i" beacons_bad_mac) -gt 0 ]] || cl_fail "node $i counted no bad-MAC beacon"
    cfnet_jq "$i" '.counters.beacons_rejected >= .counters.beacons_bad_mac' >/dev/null ||
        cl_fail "node $i: rejected total below its bad-MAC count"
    # Its registry row: its MAC does not verify under the cluster's secret.
    [[ $(counter "$i" registry_rejected) -ge 1 ]] || cl_fail "node $i did not reject node 4's row"
done
# Its connection attempts failed on both sides.
[[ $(counter 1 zap_denied) -ge 3 ]] || cl_fail "node 1 refused too few handshakes"
[[ $(counter 4 connect_auth_failed) -ge 3 ]] || cl_fail "node 4 saw no refused handshake"
grep -q "refused a CURVE handshake from $(cfnet_addr 4)" "$CFNET_DIR/h1/err" ||
    cl_fail "node 1 did not log the refusal"
# And node 4 trusted nothing of the cluster's either.
[[ $(alive_peers 4) == 0 ]] || cl_fail "node 4 sees a peer alive"
[[ $(counter 4 messages_received) == 0 ]] || cl_fail "node 4 received control messages"
[[ $(counter 4 beacons_bad_mac) -gt 0 ]] || cl_fail "node 4 did not reject the cluster's beacons"
[[ $(counter 4 registry_rejected) -ge 3 ]] || cl_fail "node 4 did not reject the cluster's rows"
cl_finish
echo "ok: node 4 refused $(counter 1 zap_denied) times by node 1," \
    "its beacons rejected $(counter 2 beacons_bad_mac) times by node 2"
