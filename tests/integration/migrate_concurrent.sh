# Four processes run `clipfarm migrate` at once: each migration is applied
# exactly once; a second run is a no-op.
source "$CF_TESTS_DIR/lib/testlib.sh"
cf_require_env CF_TEST_DATABASE_URL

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Test migrations that are NOT idempotent: applying one twice leaves two rows,
# and the sleep widens the window in which a second process could race.
mkdir "$work/sql"
cat >"$work/sql/001_counter.sql" <<'SQL'
CREATE TABLE applied_log (migration int NOT NULL, at timestamptz DEFAULT clock_timestamp());
INSERT INTO applied_log (migration) VALUES (1);
SELECT pg_sleep(0.3);
SQL
cat >"$work/sql/002_more.sql" <<'SQL'
INSERT INTO applied_log (migration) VALUES (2);
SELECT pg_sleep(0.2);
SQL
cat >"$work/sql/003_more.sql" <<'SQL'
INSERT INTO applied_log (migration) VALUES (3);
SQL
echo "not a migration" >"$work/sql/README"

run_four() {
    local url=$1 dir_args=("${@:2}") pids=() i
    for i in 1 2 3 4; do
        "$CF_BIN" migrate --database-url "$url" "${dir_args[@]}" >"$work/out.$i" 2>"$work/err.$i" &
        pids+=($!)
    done
    for i in 0 1 2 3; do
        wait "${pids[$i]}" || fail "migrate $((i + 1)) failed: $(cat "$work/err.$((i + 1))")"
    done
}

db=$(cf_fresh_database)
run_four "$db" --migrations-dir "$work/sql"
counts=$(psql "$db" -qAtX -c "SELECT string_agg(migration || ':' || n, ',' ORDER BY migration)
    FROM (SELECT migration, count(*) n FROM applied_log GROUP BY migration) s")
[[ $counts == "1:1,2:1,3:1" ]] || fail "each migration once, got $counts"
recorded=$(psql "$db" -qAtX -c "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations")
[[ $recorded == "1,2,3" ]] || fail "schema_migrations: $recorded"
applied_total=$(sed -n 's/^migrations: \([0-9]*\) applied.*/\1/p' "$work"/out.* | awk '{s += $1} END {print s}')
[[ $applied_total == 3 ]] || fail "the four runs applied $applied_total migrations in total, expected 3"

# Second run: no-op.
expect_exit 0 "$CF_BIN" migrate --database-url "$db" --migrations-dir "$work/sql"
[[ $out == "migrations: 0 applied, 3 already applied, schema version 3" ]] || fail "second run: $out"
[[ $(psql "$db" -qAtX -c "SELECT count(*) FROM applied_log") == 3 ]] || fail "second run changed data"

# An edited migration is refused, not re-applied.
echo "-- edited" >>"$work/sql/003_more.sql"
expect_exit 1 "$CF_BIN" migrate --database-url "$db" --migrations-dir "$work/sql"
expect_one_line "$err" "migration 003_more.sql was changed after it was applied"

# A failing migration leaves nothing behind and is reported with its name.
db2=$(cf_fresh_database)
mkdir "$work/bad"
printf 'CREATE TABLE t1 (x int);\nINSERT INTO no_such_table VALUES (1);\n' >"$work/bad/001_bad.sql"
expect_exit 1 "$CF_BIN" migrate --database-url "$db2" --migrations-dir "$work/bad"
expect_one_line "$err" "migration 001_bad.sql failed: .*no_such_table"
[[ $(psql "$db2" -qAtX -c "SELECT to_regclass('t1') IS NULL") == t ]] || fail "failed migration left t1"

# The built-in migrations, four at once, on another fresh database.
db3=$(cf_fresh_database)
run_four "$db3"
dupes=$(psql "$db3" -qAtX -c "SELECT count(*) - count(DISTINCT version) FROM schema_migrations")
[[ $dupes == 0 ]] || fail "duplicate versions"
n=$(psql "$db3" -qAtX -c "SELECT count(*) FROM schema_migrations")
expected=$(ls "$CF_SOURCE_DIR"/sql/[0-9]*.sql | wc -l)
[[ $n == "$expected" ]] || fail "expected $expected built-in migrations recorded, got $n"
expect_exit 0 "$CF_BIN" migrate --database-url "$db3"
[[ $out == "migrations: 0 applied, $expected already applied, "* ]] || fail "built-in second run: $out"
echo "migrate_concurrent: ok"
