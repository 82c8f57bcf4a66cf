# Bad configuration gives a one-line error and exit code 2, never a crash.
source "$CF_TESTS_DIR/lib/testlib.sh"
cf_require_env CF_TEST_DATABASE_URL

expect_exit 0 "$CF_BIN" --version
[[ $out =~ ^clipfarm\ [0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "version: $out"
expect_exit 0 "$CF_BIN" --help
[[ $out == *"commands:"* && $out == *"render"* ]] || fail "help lacks commands"
expect_exit 2 "$CF_BIN"
expect_exit 2 "$CF_BIN" frobnicate
expect_one_line "$err" "^clipfarm: unknown command 'frobnicate'"

# Unknown flag.
expect_exit 2 "$CF_BIN" node --no-such-flag
expect_one_line "$err" "^clipfarm node: --no-such-flag: unknown option"
# Malformed URLs, from a flag and from the environment.
expect_exit 2 "$CF_BIN" migrate --database-url 'http://nope'
expect_one_line "$err" "^clipfarm migrate: --database-url: malformed URL 'http://nope'"
expect_exit 2 env CF_REDIS_URL='redis://host:notaport' "$CF_BIN" node --database-url "$CF_TEST_DATABASE_URL"
expect_one_line "$err" "^clipfarm node: CF_REDIS_URL: malformed URL"
expect_exit 2 "$CF_BIN" status --server 'ftp://x'
expect_one_line "$err" "^clipfarm status: --server: malformed URL 'ftp://x'"
# Unreachable database: a closed port on loopback.
expect_exit 2 "$CF_BIN" migrate --database-url 'postgresql://postgres@127.0.0.1:1/clipfarm'
expect_one_line "$err" "^clipfarm migrate: --database-url: cannot connect: .*Connection refused"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$CF_BIN" secret generate >"$work/secret" || fail "secret generate"
expect_exit 2 "$CF_BIN" node --database-url 'postgresql://postgres@127.0.0.1:1/clipfarm' \
    --cluster-secret-file "$work/secret" --data-dir "$work/data"
expect_one_line "$err" "^clipfarm node: --database-url: cannot connect"
# Unreadable secret file: missing, a directory, mode 000.
expect_exit 2 "$CF_BIN" node --cluster-secret-file /nonexistent/secret
expect_one_line "$err" "^clipfarm node: --cluster-secret-file: cannot read '/nonexistent/secret': No such file"
expect_exit 2 "$CF_BIN" node --cluster-secret-file /
expect_one_line "$err" "^clipfarm node: --cluster-secret-file: cannot read ./.: not a regular file"
# Mode 000. Root reads any file through CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH:
# as root the command runs without those two capabilities, so the file's
# mode is what decides, as for any other user.
cp "$work/secret" "$work/locked"
chmod 000 "$work/locked"
as_user=()
if [[ $(id -u) == 0 ]]; then
    command -v setpriv >/dev/null || fail "setpriv (util-linux) is needed to drop root's file capabilities"
    as_user=(setpriv --bounding-set -dac_override,-dac_read_search --inh-caps -dac_override,-dac_read_search)
fi
expect_exit 2 "${as_user[@]}" "$CF_BIN" node --cluster-secret-file "$work/locked"
expect_one_line "$err" "^clipfarm node: --cluster-secret-file: cannot read '$work/locked': Permission denied"
# Values out of range.
expect_exit 2 "$CF_BIN" node --slots 0
expect_one_line "$err" "^clipfarm node: --slots: must be a number from 1 to 256"
expect_exit 2 "$CF_BIN" node --http-addr 'localhost'
expect_one_line "$err" "^clipfarm node: --http-addr: invalid address"
expect_exit 2 "$CF_BIN" get
expect_one_line "$err" "^clipfarm get: missing argument"

# --print-config shows flags over env with secrets masked.
expect_exit 0 env CF_HTTP_ADDR=127.0.0.1:9000 CF_LOG_LEVEL=debug "$CF_BIN" node --print-config \
    --http-addr 127.0.0.1:9001 --database-url 'postgresql://u:hunter2@db.example/clipfarm' \
    --redis-url 'redis://:hunter3@127.0.0.1:6379/0'
[[ $out == *"http-addr            = 127.0.0.1:9001"* ]] || fail "flag did not win: $out"
[[ $out == *"log-level            = debug"* ]] || fail "env not applied: $out"
[[ $out != *hunter* ]] || fail "secret shown: $out"
[[ $out == *"postgresql://u:***@db.example/clipfarm"* ]] || fail "masked url missing: $out"
echo "cli_errors: ok"
