# Private PostgreSQL and Redis servers for tests and the demo. Source this
# file; every function keeps its state in CF_SRV_* variables.
#
#   cf_pg_start DIR      initdb into DIR (once) and start Postgres on a free
#                        port, socket in DIR; sets CF_PG_PORT, CF_PG_URL
#   cf_pg_stop / cf_pg_restart
#   cf_redis_start DIR   start redis-server on a free port, data in DIR;
#                        sets CF_REDIS_PORT, CF_REDIS_URL_PRIVATE
#   cf_redis_stop / cf_redis_restart
#
# PostgreSQL refuses to run as root: as root the server runs as the
# unprivileged 'postgres' user that Debian's package creates.

cf_pg_bindir() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x $dir/initdb ]] && { echo "$dir"; return 0; }
    done
    command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return 0; }
    echo "cf_pg_bindir: no initdb found (apt-get install postgresql)" >&2
    return 1
}

# Prints a TCP port on 127.0.0.1 that nothing listens on, below the kernel's
# range for outgoing connections (ip_local_port_range, 32768+ by default) so a
# client socket cannot take it between the check and the bind.
cf_free_port() {
    local port tries=0 low=10000 high=32767 range
    range=$(cat /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null) \
        && ((${range%%[[:space:]]*} - 1 < high)) && high=$((${range%%[[:space:]]*} - 1))
    while ((tries++ < 200)); do
        port=$((low + RANDOM % (high - low + 1)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

cf_as_pg_user() {
    if [[ $(id -u) == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

cf_pg_start() {
    CF_SRV_PG_DIR=${1:?cf_pg_start DIR}
    local bindir
    bindir=$(cf_pg_bindir) || return 1
    CF_SRV_PG_BIN=$bindir
    mkdir -p "$CF_SRV_PG_DIR"
    if [[ $(id -u) == 0 ]]; then
        chown postgres: "$CF_SRV_PG_DIR"
        # The server must reach its directory through every parent.
        local d=$CF_SRV_PG_DIR
        while [[ $d != / ]]; do d=$(dirname "$d"); chmod o+x "$d" 2>/dev/null || true; done
    fi
    if [[ ! -s $CF_SRV_PG_DIR/data/PG_VERSION ]]; then
        cf_as_pg_user "$bindir/initdb" -D "$CF_SRV_PG_DIR/data" -U postgres --auth=trust \
            -E UTF8 --no-locale >"$CF_SRV_PG_DIR/initdb.log" 2>&1 \
            || { echo "initdb failed:" >&2; cat "$CF_SRV_PG_DIR/initdb.log" >&2; return 1; }
    fi
    CF_PG_PORT=${CF_PG_PORT:-$(cf_free_port)}
    cf_pg_launch
    cf_as_pg_user "$bindir/psql" -h "$CF_SRV_PG_DIR" -p "$CF_PG_PORT" -U postgres -qAt \
        -c "SELECT 1 FROM pg_database WHERE datname = 'clipfarm'" postgres | grep -q 1 \
        || cf_as_pg_user "$bindir/createdb" -h "$CF_SRV_PG_DIR" -p "$CF_PG_PORT" -U postgres clipfarm
    CF_PG_URL="postgresql://postgres@127.0.0.1:$CF_PG_PORT/clipfarm"
    export CF_PG_PORT CF_PG_URL
}

cf_pg_launch() {
    # fsync off: a test server's data is thrown away, durability buys nothing.
    cf_as_pg_user "$CF_SRV_PG_BIN/pg_ctl" -D "$CF_SRV_PG_DIR/data" -l "$CF_SRV_PG_DIR/server.log" \
        -w -t 60 -o "-p $CF_PG_PORT -k $CF_SRV_PG_DIR -c listen_addresses=127.0.0.1 \
        -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
        start >/dev/null \
        || { echo "postgres failed to start:" >&2; tail -20 "$CF_SRV_PG_DIR/server.log" >&2; return 1; }
}

cf_pg_stop() {
    [[ -n ${CF_SRV_PG_DIR:-} && -d $CF_SRV_PG_DIR/data ]] || return 0
    cf_as_pg_user "$CF_SRV_PG_BIN/pg_ctl" -D "$CF_SRV_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
}

cf_pg_restart() {
    cf_pg_stop
    cf_pg_launch
}

# Runs psql against the private server as the superuser.
cf_psql() {
    cf_as_pg_user "$CF_SRV_PG_BIN/psql" -h "$CF_SRV_PG_DIR" -p "$CF_PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAtX "$@"
}

cf_redis_start() {
    CF_SRV_REDIS_DIR=${1:?cf_redis_start DIR}
    mkdir -p "$CF_SRV_REDIS_DIR"
    CF_REDIS_PORT=${CF_REDIS_PORT:-$(cf_free_port)}
    cf_redis_launch
    CF_REDIS_URL_PRIVATE="redis://127.0.0.1:$CF_REDIS_PORT/0"
    export CF_REDIS_PORT CF_REDIS_URL_PRIVATE
}

cf_redis_launch() {
    redis-server --port "$CF_REDIS_PORT" --bind 127.0.0.1 --dir "$CF_SRV_REDIS_DIR" \
        --save '' --appendonly no --daemonize yes --pidfile "$CF_SRV_REDIS_DIR/redis.pid" \
        --logfile "$CF_SRV_REDIS_DIR/redis.log" --maxclients 2000 >/dev/null \
        || { echo "redis-server failed to start" >&2; return 1; }
    local i
    for ((i = 0; i < 100; i++)); do
        redis-cli -p "$CF_REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.1
    done
    echo "redis-server did not answer on port $CF_REDIS_PORT" >&2
    return 1
}

cf_redis_stop() {
    [[ -n ${CF_SRV_REDIS_DIR:-} && -s $CF_SRV_REDIS_DIR/redis.pid ]] || return 0
    local pid
    pid=$(cat "$CF_SRV_REDIS_DIR/redis.pid")
    kill "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$CF_SRV_REDIS_DIR/redis.pid"
}

cf_redis_restart() {
    cf_redis_stop
    cf_redis_launch
}
