#!/usr/bin/env bash
# A private S3-compatible server (s3s-fs) for the tests of the S3 engine.
#
#   scripts/servers/s3.sh start STATE_DIR
#   scripts/servers/s3.sh stop STATE_DIR
#   scripts/servers/s3.sh kill STATE_DIR
#
# `start` runs s3s-fs on 127.0.0.1 with its objects in STATE_DIR/data (one
# directory per bucket: the bucket `mqstore` is STATE_DIR/data/mqstore), a
# random access key and secret key (it checks every request's SigV4
# signature against them), waits until it answers HTTP, and writes
# STATE_DIR/env (AWS_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_REGION, AWS_ALLOW_HTTP, AWS_BUCKET: the variables S3 clients such as
# the object_store crate read; MQS_TEST_S3_ENDPOINT: what the tests look
# for) and
# STATE_DIR/s3s.pid. Starting again a STATE_DIR that was stopped or killed
# reuses its port, keys and data (a restart: the endpoint and the keys stay
# valid). `stop` shuts the server down (SIGTERM, then SIGKILL if it does
# not exit); `kill` sends SIGKILL at once (a crash).
#
# s3s-fs is not packaged by the distribution: `make s3-tools`
# (scripts/ensure-s3-server.sh) installs it with cargo under MQS_TOOLS_DIR
# (default ~/.cache/mqstore/tools), where this script looks for it.
set -euo pipefail

READY_TRIES=200   # x 0.05 s: a server not answering within 10 s failed
EXIT_TRIES=200
BUCKET=mqstore    # s3s-fs wants bucket names of at least 3 characters
REGION=us-east-1  # s3s-fs accepts any region; the clients need one

TOOLS_DIR=${MQS_TOOLS_DIR:-$HOME/.cache/mqstore/tools}
S3S_FS=$TOOLS_DIR/bin/s3s-fs

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { die "usage: $0 start STATE_DIR | stop STATE_DIR | kill STATE_DIR"; }

# s3s-fs writes no pid file: start records the pid it launched. A recorded
# pid counts only while it is an s3s-fs that has not exited (after a kill
# the system may give the pid to another program).
running_pid() {
    local pid
    pid=$(cat "$1/s3s.pid" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == s3s-fs ]] || return 1
    echo "$pid"
}

# The port and the keys, kept for a restart (the keys are secrets: 0600).
write_config() {
    local dir=$1 port=$2 access_key=$3 secret_key=$4
    (
        umask 077
        cat >"$dir/s3.conf" <<EOF
port $port
access_key $access_key
secret_key $secret_key
EOF
    )
}

config_value() { sed -n "s/^$2 //p" "$1/s3.conf"; }

# Whether process $1 itself listens on 127.0.0.1:$2 (a socket of its own in
# the LISTEN state, 0A, in its network namespace's table): an answer on the
# port then comes from it, not from another program that took the port
# first (s3s-fs would exit a moment later, unable to bind it).
listens() {
    local pid=$1 hex inode fd
    hex=$(printf '%04X' "$2")
    while read -r inode; do
        for fd in "/proc/$pid/fd/"*; do
            [[ $(readlink "$fd" 2>/dev/null) == "socket:[$inode]" ]] && return 0
        done
    done < <(awk -v local="0100007F:$hex" '$2 == local && $4 == "0A" { print $10 }' \
        "/proc/$pid/net/tcp" 2>/dev/null)
    return 1
}

# Any HTTP answer will do (an unsigned request gets 403): the server
# serves. Without curl, a TCP connection that succeeds.
answers() {
    local port=$1 code
    if command -v curl >/dev/null; then
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
            "http://127.0.0.1:$port/$BUCKET/" 2>/dev/null) || true
        [[ -n $code && $code != 000 ]]
    else
        port_in_use "$port"
    fi
}

# The launched pid, not running_pid: until setsid has exec'd s3s-fs, the
# process has another name.
wait_ready() {
    local pid=$1 port=$2
    for _ in $(seq 1 "$READY_TRIES"); do
        # A server that exited (port taken) will never answer.
        alive "$pid" || return 1
        if listens "$pid" "$port" && answers "$port"; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

start() {
    local dir=$1
    [[ -x $S3S_FS ]] || die "s3s-fs is not installed at $S3S_FS (make s3-tools, or cargo install s3s-fs@0.14.1 --locked --features binary --root \"$TOOLS_DIR\")"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if running_pid "$dir" >/dev/null; then
        die "a server already runs in $dir (pid $(cat "$dir/s3s.pid"))"
    fi
    rm -f "$dir/s3s.pid"
    mkdir -p "$dir/data/$BUCKET"
    local reuse=0 port access_key secret_key
    if [[ -f "$dir/s3.conf" ]]; then
        reuse=1
        port=$(config_value "$dir" port)
        access_key=$(config_value "$dir" access_key)
        secret_key=$(config_value "$dir" secret_key)
    else
        access_key=$(random_hex 10)
        secret_key=$(random_hex 20)
    fi
    for _ in 1 2 3 4 5; do
        if [[ $reuse == 0 ]]; then
            port=$(free_port)
            write_config "$dir" "$port" "$access_key" "$secret_key"
        fi
        # s3s-fs stays in the foreground: run it in the background, in its
        # own session (a Ctrl-C meant for the tests does not reach it; they
        # or with-servers.sh stop it), and record its pid. A background
        # job of this non-interactive shell leads no process group, so
        # setsid execs s3s-fs in place and $! is the server's pid.
        setsid "$S3S_FS" --host 127.0.0.1 --port "$port" \
            --access-key "$access_key" --secret-key "$secret_key" "$dir/data" \
            </dev/null >>"$dir/s3s.log" 2>&1 &
        local launched=$!
        echo "$launched" >"$dir/s3s.pid"
        if wait_ready "$launched" "$port"; then
            (
                umask 077
                cat >"$dir/env" <<EOF
AWS_ENDPOINT=http://127.0.0.1:$port
AWS_ACCESS_KEY_ID=$access_key
AWS_SECRET_ACCESS_KEY=$secret_key
AWS_REGION=$REGION
AWS_ALLOW_HTTP=true
AWS_BUCKET=$BUCKET
MQS_TEST_S3_ENDPOINT=http://127.0.0.1:$port
EOF
            )
            chmod 600 "$dir/env"
            echo "s3: 127.0.0.1:$port, data in $dir/data"
            return 0
        fi
        # Timed out, or exited: a live one is stopped (by its pid, named
        # s3s-fs or not yet), an exited one is reaped.
        kill -KILL "$launched" 2>/dev/null || true
        wait "$launched" 2>/dev/null || true
        rm -f "$dir/s3s.pid"
        [[ $reuse == 1 ]] && die "the server of $dir did not start on port $port (see $dir/s3s.log)"
    done
    die "s3s-fs did not start (see $dir/s3s.log)"
}

wait_exit() {
    local dir=$1
    for _ in $(seq 1 "$EXIT_TRIES"); do
        running_pid "$dir" >/dev/null || return 0
        sleep 0.05
    done
    return 1
}

stop() {
    local dir=$1 signal=${2:-TERM} pid
    pid=$(running_pid "$dir") || { rm -f "$dir/s3s.pid"; return 0; }
    kill "-$signal" "$pid" 2>/dev/null || true
    if ! wait_exit "$dir"; then
        kill -KILL "$pid" 2>/dev/null || true
        wait_exit "$dir" || die "s3s-fs (pid $pid) does not exit"
    fi
    rm -f "$dir/s3s.pid"
}

[[ $# -eq 2 ]] || usage
case "$1" in
    start) start "$2" ;;
    stop) stop "$2" TERM ;;
    kill) stop "$2" KILL ;;
    *) usage ;;
esac
