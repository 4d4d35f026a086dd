#!/usr/bin/env bash
# Runs a command with the test servers of the MySQL, Redis and S3 engines
# up:
#
#   scripts/with-servers.sh COMMAND [ARGS...]
#
# Starts a private MariaDB, Redis server and S3-compatible server
# (s3s-fs) (scripts/servers/) on 127.0.0.1, on free ports, with their data in a temporary directory, exports
# MQS_TEST_MYSQL_URL, MQS_TEST_REDIS_URL and MQS_TEST_S3_ENDPOINT (the
# engines' own unit tests read them), MQS_MYSQL_URL and MQS_REDIS_URL (what
# the engines read when a store's configuration names no URL) and the S3
# server's AWS_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_REGION, AWS_ALLOW_HTTP and AWS_BUCKET (what the S3 client reads from
# the environment), runs COMMAND, then stops the servers and removes their
# data, whatever COMMAND's outcome. When the three MQS_TEST_ variables are
# already set (an outer with-servers.sh), it only runs COMMAND.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

if [[ -n "${MQS_TEST_MYSQL_URL:-}" && -n "${MQS_TEST_REDIS_URL:-}" &&
    -n "${MQS_TEST_S3_ENDPOINT:-}" ]]; then
    exec "$@"
fi

state=$(mktemp -d "${TMPDIR:-/tmp}/mqs-servers.XXXXXX")
stop_all() {
    "$here/servers/mariadb.sh" stop "$state/mariadb" >/dev/null 2>&1 || true
    "$here/servers/redis.sh" stop "$state/redis" >/dev/null 2>&1 || true
    "$here/servers/s3.sh" stop "$state/s3" >/dev/null 2>&1 || true
    rm -rf "$state"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

mkdir -p "$state/mariadb" "$state/redis" "$state/s3"
"$here/servers/mariadb.sh" start "$state/mariadb"
"$here/servers/redis.sh" start "$state/redis"
"$here/servers/s3.sh" start "$state/s3"
set -a
# shellcheck disable=SC1091
source "$state/mariadb/env"
# shellcheck disable=SC1091
source "$state/redis/env"
# shellcheck disable=SC1091
source "$state/s3/env"
set +a
# The engines read these when a store's configuration names no URL.
export MQS_MYSQL_URL=$MQS_TEST_MYSQL_URL MQS_REDIS_URL=$MQS_TEST_REDIS_URL
echo "with-servers: MariaDB, Redis and S3 (s3s-fs) up on 127.0.0.1 (data in $state)"
"$@"
