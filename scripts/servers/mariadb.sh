#!/usr/bin/env bash
# A throwaway MariaDB server for the MySQL engine's tests, its data, socket,
# log and pid file all in one state directory, on a free port of 127.0.0.1.
#
#   mariadb.sh start STATE_DIR [MARIADBD_ARGS...]
#   mariadb.sh stop STATE_DIR
#
# start initializes STATE_DIR on first use (a later start reuses the data,
# the port and the password: a test can kill the server and start it again
# where its clients expect it), creates the user `mqs` with a random
# password and every privilege, waits until that user can log in, and
# writes STATE_DIR/env (MQS_TEST_MYSQL_URL=mysql://mqs:PASSWORD@127.0.0.1:PORT/mqstore_test)
# and STATE_DIR/mariadb.pid. Extra mariadbd arguments (after STATE_DIR, or
# in MQS_MARIADB_ARGS) come last, so they override the defaults: a test
# starts a misconfigured second server with, e.g.,
# --innodb-flush-log-at-trx-commit=2.
#
# The settings keep the server small and quick to start, but commits stay
# durable (innodb_flush_log_at_trx_commit=1, no binary log), and
# max_allowed_packet is 1 GiB so that a 64 MiB batch fits.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    die "usage: $0 start STATE_DIR [MARIADBD_ARGS...] | stop STATE_DIR"
}

find_binaries() {
    MARIADBD=$(command -v mariadbd || command -v mysqld || true)
    [[ -z $MARIADBD && -x /usr/sbin/mariadbd ]] && MARIADBD=/usr/sbin/mariadbd
    INSTALL_DB=$(command -v mariadb-install-db || command -v mysql_install_db || true)
    CLIENT=$(command -v mariadb || command -v mysql || true)
    [[ -n $MARIADBD && -n $INSTALL_DB && -n $CLIENT ]] ||
        die "MariaDB is not installed (apt-get install -y mariadb-server)"
}

running_pid() {
    local pidfile=$1/mariadb.pid pid
    [[ -f $pidfile ]] || return 1
    pid=$(cat "$pidfile")
    [[ -n $pid ]] && alive "$pid" || return 1
    echo "$pid"
}

initialize() {
    local dir=$1
    mkdir -p "$dir/data" "$dir/tmp"
    [[ -f $dir/port ]] || free_port >"$dir/port"
    [[ -f $dir/password ]] || random_hex 12 >"$dir/password"
    if [[ ! -d $dir/data/mysql ]]; then
        "$INSTALL_DB" --no-defaults --datadir="$dir/data" --user="$(id -un)" \
            --auth-root-authentication-method=normal --skip-test-db \
            >"$dir/install.log" 2>&1 || {
            tail -20 "$dir/install.log" >&2
            die "mariadb-install-db failed (log: $dir/install.log)"
        }
    fi
    local password
    password=$(cat "$dir/password")
    cat >"$dir/init.sql" <<EOF
CREATE USER IF NOT EXISTS 'mqs'@'%' IDENTIFIED BY '$password';
CREATE USER IF NOT EXISTS 'mqs'@'localhost' IDENTIFIED BY '$password';
ALTER USER 'mqs'@'%' IDENTIFIED BY '$password';
ALTER USER 'mqs'@'localhost' IDENTIFIED BY '$password';
GRANT ALL PRIVILEGES ON *.* TO 'mqs'@'%' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'mqs'@'localhost' WITH GRANT OPTION;
EOF
}

socket_path() {
    local dir=$1 sock
    sock=$dir/mysqld.sock
    # A Unix socket path is at most 107 bytes.
    ((${#sock} <= 100)) || sock=/tmp/mqs-mariadb-$(cat "$dir/port").sock
    echo "$sock"
}

# Starts mariadbd on the state directory's port and waits until it answers;
# fails when it exits at start (a port taken since `free_port` looked at
# it, say).
launch() {
    local dir=$1
    shift
    local port password user extra=()
    port=$(cat "$dir/port")
    password=$(cat "$dir/password")
    user=()
    [[ $(id -u) -ne 0 ]] || user=(--user=root)
    # shellcheck disable=SC2206
    [[ -z ${MQS_MARIADB_ARGS:-} ]] || extra=($MQS_MARIADB_ARGS)
    setsid "$MARIADBD" --no-defaults "${user[@]}" \
        --datadir="$dir/data" --tmpdir="$dir/tmp" \
        --socket="$(socket_path "$dir")" --pid-file="$dir/mariadb.pid" \
        --log-error="$dir/error.log" \
        --port="$port" --bind-address=127.0.0.1 --skip-name-resolve \
        --init-file="$dir/init.sql" \
        --skip-log-bin --performance-schema=OFF \
        --innodb-buffer-pool-size=64M --innodb-log-file-size=128M \
        --innodb-flush-log-at-trx-commit=1 --loose-innodb-use-native-aio=0 \
        --max-allowed-packet=1G --max-connections=500 \
        "${extra[@]}" "$@" </dev/null >>"$dir/stdout.log" 2>&1 &
    local launched=$!
    local i
    for i in $(seq 600); do
        if "$CLIENT" --no-defaults --protocol=TCP -h127.0.0.1 -P"$port" -umqs -p"$password" \
            --connect-timeout=2 -e 'SELECT 1' >/dev/null 2>&1; then
            break
        fi
        if ! kill -0 "$launched" 2>/dev/null; then
            tail -30 "$dir/error.log" >&2 || true
            echo "mariadb.sh: mariadbd exited at start on port $port" >&2
            rm -f "$dir/mariadb.pid"
            return 1
        fi
        ((i < 600)) || die "mariadbd did not answer within 60 s (log: $dir/error.log)"
        sleep 0.1
    done
    # mariadbd writes its pid file itself; make sure it is there before
    # anyone reads it.
    [[ -s $dir/mariadb.pid ]] || echo "$launched" >"$dir/mariadb.pid"
}

start() {
    local dir=$1
    shift
    find_binaries
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if running_pid "$dir" >/dev/null; then
        echo "mariadb.sh: already running in $dir" >&2
        return
    fi
    rm -f "$dir/mariadb.pid"
    # A restart keeps its port (its URL is handed out already); a first
    # start takes another one when the one chosen was taken meanwhile.
    local reuse=0
    [[ ! -f $dir/port ]] || reuse=1
    initialize "$dir"
    for _ in 1 2 3 4 5; do
        launch "$dir" "$@" && break
        [[ $reuse == 0 ]] || die "mariadbd exited at start (log: $dir/error.log)"
        free_port >"$dir/port"
    done
    running_pid "$dir" >/dev/null || die "mariadbd did not start (log: $dir/error.log)"
    local port password
    port=$(cat "$dir/port")
    password=$(cat "$dir/password")
    echo "MQS_TEST_MYSQL_URL=mysql://mqs:$password@127.0.0.1:$port/mqstore_test" >"$dir/env"
    chmod 600 "$dir/env"
    # The URL holds the password: it stays in the env file.
    echo "mariadb: 127.0.0.1:$port, data in $dir"
}

stop() {
    local dir=$1 pid
    pid=$(running_pid "$dir") || {
        rm -f "$dir/mariadb.pid"
        return 0
    }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "mariadb.sh: mariadbd $pid ignored SIGTERM for 30 s, killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/mariadb.pid"
}

[[ $# -ge 2 ]] || usage
command=$1
shift
case $command in
start) start "$@" ;;
stop) stop "$1" ;;
*) usage ;;
esac
