# Helpers shared by the private test servers' scripts (sourced, not run).

# Exits with a message naming the script.
die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port nobody listens on now (another start may still take it first: the
# callers retry with another one when their server cannot bind).
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 40000))
        if ! port_in_use "$port"; then
            echo "$port"
            return 0
        fi
    done
    die "no free port found on 127.0.0.1"
}

# A process that has not exited (a zombie nobody reaped yet has).
alive() {
    local stat
    kill -0 "$1" 2>/dev/null || return 1
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# $1 random bytes, in hex.
random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
