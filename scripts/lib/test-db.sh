# shellcheck shell=bash
# Sourced by scripts/test and the benchmarks: starts a throwaway PostgreSQL
# cluster on a Unix socket (no TCP), exports ISDF_TEST_DATABASE_URL, and
# removes the cluster when the calling script exits.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pg_dir=$(mktemp -d /tmp/isdf-test-pg.XXXXXX)
chmod 755 "$pg_dir"
chown postgres:postgres "$pg_dir"
stop_pg() {
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
}
trap stop_pg EXIT
echo "==> starting PostgreSQL in $pg_dir" >&2
runuser -u postgres -- "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
# Durability is irrelevant for a throwaway test cluster: trade it for speed.
runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w \
    -o "-c listen_addresses='' -c unix_socket_directories='$pg_dir' -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null
export ISDF_TEST_DATABASE_URL="postgres://postgres@localhost/postgres?host=$pg_dir"

