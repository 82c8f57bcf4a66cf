# Without any API key, a node refuses to serve the API on a non-loopback
# address (unless --insecure-no-auth); on loopback it starts and answers 401
# until a key exists. 192.0.2.1 (TEST-NET-1, on no interface here) stands
# for a public address: the refusal comes before the HTTP address is bound
# (the control socket is on loopback), so this test sends nothing off
# loopback.
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/apinode.sh"
api_setup
port=$(cf_free_port)
cport=$(cf_free_port)
# --log-level error: the node's info logs (also on stderr) stay out, and
# stderr must then be exactly the one line, nothing filtered out.
expect_exit 2 timeout 60 "$CF_BIN" node --log-level error --database-url "$API_DB" \
    --redis-url "$CF_TEST_REDIS_URL" --redis-prefix "$API_PREFIX" --http-addr "192.0.2.1:$port" \
    --control-addr "127.0.0.1:$cport" --data-dir "$API_WORK/public" --cluster-secret-file "$API_SECRET"
expect_one_line "$err" \
    "^clipfarm node: refusing to serve 192\.0\.2\.1:$port without API keys: create one with 'clipfarm apikey create NAME', or pass --insecure-no-auth$"

# Loopback: starts, and every /api/v1 request is refused until a key exists.
api_node_start local --no-render
api_curl "$API_URL/api/v1/compositions"
expect_error 401 unauthorized "no keys at all"
api_curl "$API_URL/healthz"
expect_status 200 "healthz without keys"
grep -q "no API keys yet" "$API_WORK/local/log" || fail "no warning about missing keys"
API_KEY=$(api_key first) || exit 1
# What the database keeps is the key's BLAKE2b keyed by the cluster secret,
# computed here independently (Python's hashlib) from the secret file.
key_id=${API_KEY:3:16}
stored=$(psql "$API_DB" -qAtX -c "SELECT encode(secret_hash, 'hex') FROM api_keys WHERE id = '$key_id'")
want=$(python3 -c 'import hashlib, sys
hk = hashlib.blake2b(b"clipfarm api key hashing v1\0" + open(sys.argv[1], "rb").read().strip(),
                     digest_size=32).digest()
print(hashlib.blake2b(sys.argv[2].encode(), digest_size=32, key=hk).hexdigest())' "$API_SECRET" "$API_KEY")
[[ -n $stored && $stored == "$want" ]] || fail "stored hash $stored, independently computed $want"
api_curl "$API_URL/api/v1/compositions"
expect_status 200 "after the first key"
echo "api_auth_required: ok"
