#!/usr/bin/env bash
# Runs a command with the test servers of the MySQL and Redis engines up:
#
#   scripts/with-servers.sh COMMAND [ARGS...]
#
# Starts a private MariaDB and a private Redis server (scripts/servers/)
# on 127.0.0.1, on free ports, with their data in a temporary directory,
# exports MQS_TEST_MYSQL_URL and MQS_TEST_REDIS_URL (the engines' own
# unit tests read them) and MQS_MYSQL_URL and MQS_REDIS_URL (what the
# engines read when a store's configuration names no URL), runs COMMAND, then stops both servers and removes their data,
# whatever COMMAND's outcome. When both variables are already set (an
# outer with-servers.sh), it only runs COMMAND.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

if [[ -n "${MQS_TEST_MYSQL_URL:-}" && -n "${MQS_TEST_REDIS_URL:-}" ]]; then
    exec "$@"
fi

state=$(mktemp -d "${TMPDIR:-/tmp}/mqs-servers.XXXXXX")
stop_all() {
    "$here/servers/mariadb.sh" stop "$state/mariadb" >/dev/null 2>&1 || true
    "$here/servers/redis.sh" stop "$state/redis" >/dev/null 2>&1 || true
    rm -rf "$state"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

mkdir -p "$state/mariadb" "$state/redis"
"$here/servers/mariadb.sh" start "$state/mariadb"
"$here/servers/redis.sh" start "$state/redis"
set -a
# shellcheck disable=SC1091
source "$state/mariadb/env"
# shellcheck disable=SC1091
source "$state/redis/env"
set +a
# The engines read these when a store's configuration names no URL.
export MQS_MYSQL_URL=$MQS_TEST_MYSQL_URL MQS_REDIS_URL=$MQS_TEST_REDIS_URL
echo "with-servers: MariaDB and Redis up on 127.0.0.1 (data in $state)"
"$@"
