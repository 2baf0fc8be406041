#!/usr/bin/env bash
# Backup and restore timings on the release binary: a vault with KEYS keys (default 1000;
# each create is a sealed value, an audit entry and a synced write), then `backup create`
# (age recipient and passphrase), `backup verify`, and `backup restore` into a fresh SQLite
# and a fresh PostgreSQL database. Prints seconds and sizes. Not a CI step.
#
#   scripts/backup_bench.sh [KEYS]     (PostgreSQL at $KEYWARD_TEST_POSTGRES_URL or
#                                       postgres://postgres@127.0.0.1:5432/postgres)
set -euo pipefail
cd "$(dirname "$0")/.."
keys="${1:-1000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keyward-target}"
# KEYWARD_BIN: an already built release binary (e.g. the one .ci/run just built).
if [ -z "${KEYWARD_BIN:-}" ]; then
  cargo build --quiet --release -p keyward-server --bin keyward
fi
bin="${KEYWARD_BIN:-$CARGO_TARGET_DIR/release/keyward}"
work="$(mktemp -d)"
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))
clean_env() { env -u KEYWARD_DATABASE_URL -u KEYWARD_DATA_DIR -u KEYWARD_BIN "$@"; }

mkdir -p "$work/src"
(cd "$work/src" && clean_env "$bin" serve --listen "127.0.0.1:$port" >"$work/serve.log" 2>&1) &
server=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
token="$(cd "$work/src" && clean_env "$bin" token create --name bench --role owner | tail -1)"
start=$(date +%s.%N)
seq 1 "$keys" | xargs -P 4 -I{} curl -sf -o /dev/null -X POST "http://127.0.0.1:$port/api/v1/keys" \
  -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"service":"openai","environment":"production","alias":"k{}","secret":"sk-proj-bench{}abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ","force":true}'
echo "seeded $keys keys in $(echo "$(date +%s.%N) - $start" | bc) s"
kill "$server"; wait "$server" 2>/dev/null || true; server=""

timed() { local s; s=$(date +%s.%N); "$@" >/dev/null; echo "$(echo "$(date +%s.%N) - $s" | bc)"; }
recipient="$(cd "$work" && clean_env "$bin" backup keygen --out "$work/id" 2>/dev/null)"
in_src() { (cd "$work/src" && clean_env "$@"); }
t_create=$(timed in_src "$bin" backup create --to "$work/r.kwbackup" --recipient "$recipient")
t_pass=$(timed in_src env KEYWARD_BACKUP_PASSPHRASE="bench passphrase 123" "$bin" backup create --to "$work/p.kwbackup")
t_verify=$(timed in_src "$bin" backup verify "$work/r.kwbackup" --identity "$work/id")
db_bytes=$(stat -c %s "$work/src/data/keyward.db")
echo "database: $db_bytes bytes; backup: $(stat -c %s "$work/r.kwbackup") bytes (recipient), $(stat -c %s "$work/p.kwbackup") bytes (passphrase)"
echo "create (recipient): ${t_create} s; create (passphrase, scrypt): ${t_pass} s; verify: ${t_verify} s"

mkdir -p "$work/sq/data" && cp "$work/src/data/master.key" "$work/sq/data/"
t_sqlite=$(timed bash -c "cd '$work/sq' && env -u KEYWARD_DATABASE_URL -u KEYWARD_BIN '$bin' backup restore '$work/r.kwbackup' --identity '$work/id'")
echo "restore into fresh SQLite (with drill): ${t_sqlite} s"

admin="${KEYWARD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
name="kw_bench_$RANDOM"
psql -q "$admin" -c "CREATE DATABASE $name"
mkdir -p "$work/pg/data" && cp "$work/src/data/master.key" "$work/pg/data/"
t_pg=$(timed bash -c "cd '$work/pg' && env -u KEYWARD_BIN KEYWARD_DATABASE_URL='${admin%/*}/$name' '$bin' backup restore '$work/r.kwbackup' --identity '$work/id'")
psql -q "$admin" -c "DROP DATABASE $name"
echo "restore into fresh PostgreSQL (with drill): ${t_pg} s"
