# Small assertion helpers for shell tests. Source it; a failed check prints
# what was expected and exits 1. CF_BIN is set by ctest.
set -uo pipefail
CF_BIN=${CF_BIN:?CF_BIN is not set (run under ctest)}
cf_test_failures=0

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

cf_require_env() {
    local name
    for name in "$@"; do
        [[ -n ${!name:-} ]] || { echo "skip: $name is not set (run the suite with tests/run)"; exit 77; }
    done
}

cf_require_root() {
    [[ $(id -u) == 0 ]] || { echo "skip: needs root (network namespaces)"; exit 77; }
}

# expect_exit CODE CMD...: runs CMD, checks its exit code, leaves its stdout
# in $out and stderr in $err.
expect_exit() {
    local want=$1
    shift
    local tmp_out tmp_err
    tmp_out=$(mktemp) tmp_err=$(mktemp)
    "$@" >"$tmp_out" 2>"$tmp_err"
    local got=$?
    out=$(cat "$tmp_out") err=$(cat "$tmp_err")
    rm -f "$tmp_out" "$tmp_err"
    [[ $got == "$want" ]] || fail "'$*' exited $got, expected $want; stderr: $err"
}

# expect_one_line TEXT PATTERN: TEXT is exactly one line and matches PATTERN (ERE).
expect_one_line() {
    local text=$1 pattern=$2
    [[ $(printf '%s\n' "$text" | wc -l) == 1 ]] || fail "expected one line, got: $text"
    [[ $text =~ $pattern ]] || fail "'$text' does not match /$pattern/"
}

# A fresh, empty database on the test server; prints its URL.
cf_fresh_database() {
    local name=cf_$(tr -dc a-z0-9 </dev/urandom | head -c 10)
    psql "$CF_TEST_DATABASE_URL" -qAtX -c "CREATE DATABASE $name" >/dev/null || fail "createdb $name"
    echo "${CF_TEST_DATABASE_URL%/*}/$name"
}
