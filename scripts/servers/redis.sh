#!/usr/bin/env bash
# A private Redis server for the tests of the Redis engine.
#
#   scripts/servers/redis.sh start STATE_DIR [APPENDFSYNC]
#   scripts/servers/redis.sh stop STATE_DIR
#   scripts/servers/redis.sh kill STATE_DIR
#
# `start` runs redis-server on 127.0.0.1 with its data in STATE_DIR,
# `appendonly yes`, `appendfsync APPENDFSYNC` (default `always`) and a
# random password, waits until it answers PING, and writes
# STATE_DIR/env (MQS_TEST_REDIS_URL=redis://:PASSWORD@127.0.0.1:PORT/) and
# STATE_DIR/redis.pid. Starting again a STATE_DIR that was stopped or
# killed reuses its port, password and data (a restart: the URL stays
# valid). `stop` shuts the server down (SIGTERM, then SIGKILL if it does
# not exit); `kill` sends SIGKILL at once (a crash).
set -euo pipefail

READY_TRIES=200   # x 0.05 s: a server not answering within 10 s failed
EXIT_TRIES=200

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { die "usage: $0 start STATE_DIR [always|everysec|no] | stop STATE_DIR | kill STATE_DIR"; }

running_pid() {
    local pid
    pid=$(cat "$1/redis.pid" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" && echo "$pid"
}

write_config() {
    local dir=$1 port=$2 password=$3 appendfsync=$4
    (
        umask 077
        cat >"$dir/redis.conf" <<EOF
bind 127.0.0.1
port $port
protected-mode yes
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
dir $dir
appendonly yes
appendfsync $appendfsync
save ""
requirepass $password
EOF
    )
}

wait_ready() {
    local dir=$1 port=$2 password=$3
    for _ in $(seq 1 "$READY_TRIES"); do
        if REDISCLI_AUTH="$password" redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null \
            | grep -q PONG; then
            return 0
        fi
        # A server that exited (port taken, bad config) will never answer.
        if [[ -f "$dir/redis.pid" ]] && ! running_pid "$dir" >/dev/null; then
            return 1
        fi
        sleep 0.05
    done
    return 1
}

config_value() { sed -n "s/^$2 //p" "$1/redis.conf"; }

start() {
    local dir=$1 appendfsync=${2:-always}
    command -v redis-server >/dev/null || die "redis-server is not installed (apt-get install -y redis-server)"
    case "$appendfsync" in always | everysec | no) ;; *) usage ;; esac
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if running_pid "$dir" >/dev/null; then
        die "a server already runs in $dir (pid $(cat "$dir/redis.pid"))"
    fi
    rm -f "$dir/redis.pid"
    local reuse=0 port password
    if [[ -f "$dir/redis.conf" ]]; then
        reuse=1
        port=$(config_value "$dir" port)
        password=$(config_value "$dir" requirepass)
        [[ $# -ge 2 ]] && sed -i "s/^appendfsync .*/appendfsync $appendfsync/" "$dir/redis.conf"
    else
        password=$(random_hex 16)
    fi
    for _ in 1 2 3 4 5; do
        if [[ $reuse == 0 ]]; then
            port=$(free_port)
            write_config "$dir" "$port" "$password" "$appendfsync"
        fi
        redis-server "$dir/redis.conf" >>"$dir/redis.log" 2>&1 || true
        if wait_ready "$dir" "$port" "$password"; then
            echo "MQS_TEST_REDIS_URL=redis://:$password@127.0.0.1:$port/" >"$dir/env"
            chmod 600 "$dir/env"
            echo "redis: 127.0.0.1:$port, data in $dir"
            return 0
        fi
        stop "$dir" >/dev/null 2>&1 || true
        [[ $reuse == 1 ]] && die "the server of $dir did not start on port $port (see $dir/redis.log)"
    done
    die "redis-server did not start (see $dir/redis.log)"
}

wait_exit() {
    local pid=$1
    for _ in $(seq 1 "$EXIT_TRIES"); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.05
    done
    return 1
}

stop() {
    local dir=$1 signal=${2:-TERM} pid
    pid=$(running_pid "$dir") || { rm -f "$dir/redis.pid"; return 0; }
    kill "-$signal" "$pid" 2>/dev/null || true
    if ! wait_exit "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        wait_exit "$pid" || die "redis-server (pid $pid) does not exit"
    fi
    rm -f "$dir/redis.pid"
}

[[ $# -ge 2 ]] || usage
case "$1" in
    start) start "$2" "${@:3}" ;;
    stop) stop "$2" TERM ;;
    kill) stop "$2" KILL ;;
    *) usage ;;
esac
