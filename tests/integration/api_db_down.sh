# With Postgres unreachable the API answers 503 (JSON error, Retry-After)
# instead of hanging or crashing, /readyz says which dependency is down,
# /healthz stays up, and everything recovers when Postgres is back. Uses its
# own private Postgres, so stopping it disturbs no other test.
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/apinode.sh"
api_setup
unset CF_PG_PORT
cf_pg_start "$API_WORK/pg" || fail "private postgres"
trap 'api_cleanup_all' EXIT
api_cleanup_all() {
    local rc=$?
    cf_pg_stop
    (exit "$rc")
    api_cleanup
}
API_DB=$CF_PG_URL
export CF_DATABASE_URL=$API_DB
api_media "$API_WORK/a.mp4" 1
# No key cache (--auth-cache-ms 0): with Postgres down, authentication
# itself needs it at once, no wait for a cache to run out.
api_node_start a --no-render --auth-cache-ms 0
API_KEY=$(api_key dbdown) || exit 1
api_curl -X POST -H 'Content-Type: application/json' -d "$(api_comp_json "$API_WORK/a.mp4")" \
    "$API_URL/api/v1/compositions"
expect_status 202 create
id=$(jq -r .id <<<"$body")

cf_pg_stop
start=$(date +%s)
api_curl "$API_URL/api/v1/compositions"
expect_error 503 database_unavailable "list with Postgres down"
grep -qi '^Retry-After: [0-9]' <<<"$headers" || fail "503 without Retry-After: $headers"
api_curl "$API_URL/api/v1/compositions/$id/segments"
expect_error 503 database_unavailable "segments with Postgres down"
api_curl -X POST -H 'Content-Type: application/json' -d "$(api_comp_json "$API_WORK/a.mp4")" \
    "$API_URL/api/v1/compositions"
expect_error 503 database_unavailable "create with Postgres down"
(($(date +%s) - start < 20)) || fail "503s took too long to come"
api_curl "$API_URL/readyz"
expect_status 503 "readyz with Postgres down"
[[ $(jq -r .checks.database <<<"$body") != ok && $(jq -r .checks.redis <<<"$body") == ok ]] \
    || fail "readyz checks: $body"
api_curl "$API_URL/healthz"
expect_status 200 "healthz with Postgres down"

cf_pg_launch || fail "postgres restart"
for ((i = 0; i < 100; i++)); do
    api_curl "$API_URL/api/v1/compositions/$id"
    [[ $status == 200 ]] && break
    sleep 0.2
done
expect_status 200 "get after Postgres came back"
[[ $(jq -r .id <<<"$body") == "$id" ]] || fail "composition lost: $body"
api_curl "$API_URL/readyz"
expect_status 200 "readyz after Postgres came back"
echo "api_db_down: ok"
