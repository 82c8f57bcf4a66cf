# `clipfarm node` refuses bad cluster options with exit 2 and one line that
# names the option, before joining anything.
source "$CF_TESTS_DIR/lib/testlib.sh"
cf_require_env CF_TEST_DATABASE_URL
db=$(cf_fresh_database)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$CF_BIN" secret generate >"$dir/secret"
chmod 600 "$dir/secret"
base=(node --database-url "$db" --data-dir "$dir/data" --control-addr 127.0.0.1:1)

expect_exit 2 "$CF_BIN" node --database-url "$db" --data-dir "$dir/data"
expect_one_line "$err" '^clipfarm node: --cluster-secret-file .* is required'
expect_exit 2 "$CF_BIN" "${base[@]}" --cluster-secret-file "$dir/missing"
expect_one_line "$err" '^clipfarm node: --cluster-secret-file: cannot read'
echo "not hex" >"$dir/bad-secret"
expect_exit 2 "$CF_BIN" "${base[@]}" --cluster-secret-file "$dir/bad-secret"
expect_one_line "$err" '^clipfarm node: --cluster-secret-file: .*64 hex digits'

args=("${base[@]}" --cluster-secret-file "$dir/secret")
expect_exit 2 "$CF_BIN" "${args[@]}" --discovery sometimes
expect_one_line "$err" '^clipfarm node: --discovery: expected both, beacon or registry'
expect_exit 2 "$CF_BIN" "${args[@]}" --discovery beacon
expect_one_line "$err" '^clipfarm node: --discovery beacon needs --beacon-iface'
expect_exit 2 "$CF_BIN" "${args[@]}" --beacon-iface no-such-if0
expect_one_line "$err" "^clipfarm node: --beacon-iface: no such network interface"
expect_exit 2 "$CF_BIN" "${args[@]}" --peer not-a-peer
expect_one_line "$err" "^clipfarm node: --peer: expected Z85KEY@HOST:PORT, got 'not-a-peer'"
expect_exit 2 "$CF_BIN" "${args[@]}" --heartbeat-interval 3 --peer-grace 5
expect_one_line "$err" '^clipfarm node: --peer-grace .* at least twice --heartbeat-interval'
expect_exit 2 "$CF_BIN" "${args[@]}" --lease-ttl 0
expect_one_line "$err" '^clipfarm node: --lease-ttl: must be a number from'
expect_exit 2 "$CF_BIN" node --database-url "$db" --data-dir "$dir/data" \
    --cluster-secret-file "$dir/secret" --control-addr 0.0.0.0:7070
expect_one_line "$err" '^clipfarm node: --control-addr: a wildcard address needs --beacon-iface'

# --help lists the cluster options.
expect_exit 0 "$CF_BIN" node --help
for opt in --lease-ttl --peer-grace --heartbeat-interval --beacon-interval --replay-window \
    --status-file --peer --discovery --beacon-iface --cluster-secret-file; do
    grep -q -- "$opt" <<<"$out" || fail "node --help does not list $opt"
done
echo ok
