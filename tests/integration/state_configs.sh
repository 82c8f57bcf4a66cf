# cluster/postgresql.conf and cluster/redis.conf: the servers of this machine
# start with them (memory sizes scaled down to fit a test host) and report
# the tuned values.
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/servers.sh"
cf_require_env CF_TEST_DATABASE_URL

work=$(mktemp -d)
chmod 755 "$work"
pg_started=0 redis_pid=""
cleanup() {
    ((pg_started)) && cf_as_pg_user "$bindir/pg_ctl" -D "$work/data" -m immediate -w stop >/dev/null 2>&1
    [[ -n $redis_pid ]] && kill "$redis_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# --- PostgreSQL
bindir=$(cf_pg_bindir) || fail "no PostgreSQL binaries"
[[ -r $CF_SOURCE_DIR/cluster/postgresql.conf ]] || fail "missing cluster/postgresql.conf"
# A copy the server's user can read: the checkout may sit in root's home.
conf=$work/postgresql.conf
cp "$CF_SOURCE_DIR/cluster/postgresql.conf" "$conf"
chmod 644 "$conf"
[[ $(id -u) == 0 ]] && chown postgres: "$work"
cf_as_pg_user "$bindir/initdb" -D "$work/data" -U postgres --auth=trust --no-locale -E UTF8 \
    >"$work/initdb.log" 2>&1 || fail "initdb: $(tail -5 "$work/initdb.log")"
port=$(cf_free_port)
# The file as the configuration; only the host-specific lines are overridden
# (the data directory's own hba files, a port, a small shared_buffers).
cf_as_pg_user "$bindir/pg_ctl" -D "$work/data" -l "$work/pg.log" -w -t 60 -o "-c config_file=$conf \
    -c data_directory=$work/data -c hba_file=$work/data/pg_hba.conf \
    -c ident_file=$work/data/pg_ident.conf -p $port -k $work -c listen_addresses=127.0.0.1 \
    -c shared_buffers=64MB -c max_connections=20" start >/dev/null \
    || fail "postgres does not start with $conf: $(tail -5 "$work/pg.log")"
pg_started=1
show() { psql "postgresql://postgres@127.0.0.1:$port/postgres" -qAtX -c "SHOW $1"; }
[[ $(show random_page_cost) == 1.1 ]] || fail "random_page_cost: $(show random_page_cost)"
[[ $(show work_mem) == 64MB ]] || fail "work_mem: $(show work_mem)"
[[ $(show max_wal_size) == 4GB ]] || fail "max_wal_size: $(show max_wal_size)"
[[ $(show shared_preload_libraries) == pg_stat_statements ]] || fail "pg_stat_statements not preloaded"
[[ $(show idle_in_transaction_session_timeout) == 1min ]] || fail "idle_in_transaction_session_timeout"

# --- Redis
conf=$CF_SOURCE_DIR/cluster/redis.conf
[[ -r $conf ]] || fail "missing $conf"
rport=$(cf_free_port)
redis-server "$conf" --port "$rport" --bind 127.0.0.1 --dir "$work" --daemonize no \
    --maxmemory 64mb --logfile "$work/redis.log" &
redis_pid=$!
for ((i = 0; i < 100; i++)); do
    redis-cli -p "$rport" ping 2>/dev/null | grep -q PONG && break
    sleep 0.05
done
get() { redis-cli -p "$rport" config get "$1" | sed -n 2p; }
[[ $(get maxmemory-policy) == volatile-lru ]] || fail "redis does not run $conf: $(tail -5 "$work/redis.log")"
[[ $(get appendonly) == yes ]] || fail "appendonly: $(get appendonly)"
[[ $(get appendfsync) == everysec ]] || fail "appendfsync: $(get appendfsync)"
[[ $(get save) == "900 1 300 10 60 10000" ]] || fail "save: $(get save)"
redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1
redis_pid=""
echo "state_configs: ok"
