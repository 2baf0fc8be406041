#!/usr/bin/env bash
# Runs schemathesis (pinned) against a fresh `keyward serve` and its own OpenAPI document,
# as an owner token, for a bounded time, with every check; `scripts/schemathesis.toml`
# says which refusals a schema-valid request may meet (422 for semantic rules, never 400).
# .ci/run runs it; exits non-zero on any failure.
#
#   scripts/schemathesis.sh [seconds]      (default 120)
#
# Paths that would lock the run out of its own server are excluded: revoking tokens,
# network allowlists, the approval and MFA policies, signing out.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-120}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keyward-target}"
venv="$HOME/.cache/keyward-st-venv"
[ -x "$venv/bin/schemathesis" ] || {
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.32.5"
}
cargo build --quiet -p keyward-server
bin="$CARGO_TARGET_DIR/debug/keyward"
dir="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$dir"' EXIT
(cd "$dir" && exec "$bin" serve --listen 127.0.0.1:0 >"$dir/out" 2>"$dir/err") &
pid=$!
for _ in $(seq 1 50); do grep -q "listening on" "$dir/out" 2>/dev/null && break; sleep 0.2; done
base="$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$dir/out")"
token="$(cd "$dir" && "$bin" token create --name schemathesis --role owner | tail -1)"
"$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run "$base/api/v1/openapi.json" --url "$base" \
  -H "Authorization: Bearer $token" --max-time "$seconds" -w 1 \
  --exclude-path-regex '/(tokens/\{id\}/revoke|roles/\{id\}/networks|users/\{id\}/networks|policies/|auth/logout)'
