#!/usr/bin/env bash
# OFREP throughput: starts a release build of `anchor serve` on a fresh data directory,
# creates FLAGS boolean flags (a country rule, then a 50/50 rollout) through the
# management API, and drives the OFREP endpoints with wrk. Every request carries its
# own targeting key, so bucketing and rule matching run for real on every request.
#
#   scripts/bench-ofrep.sh            # 1,000 flags, 20 s per scenario
#   FLAGS=100 SECONDS_EACH=10 scripts/bench-ofrep.sh
#
# Needs wrk, curl and python3. Prints a Markdown table of requests/s, p50 and p99.
set -euo pipefail

FLAGS=${FLAGS:-1000}
SECONDS_EACH=${SECONDS_EACH:-20}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-4599}
BASE="http://127.0.0.1:$PORT"
PASSWORD="bench password, not a secret"

for tool in wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "bench-ofrep: $tool is required" >&2; exit 1; }
done

cd "$(dirname "$0")/.."
cargo build --release -q -p anchor-cli

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ANCHOR_ADMIN_PASSWORD="$PASSWORD" target/release/anchor serve \
    --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
    curl -sf "$BASE/readyz" >/dev/null && break
    sleep 0.1
done
curl -sf "$BASE/readyz" >/dev/null || { cat "$WORK/server.log" >&2; exit 1; }

# A token, because checking a password on each of thousands of calls would be slow.
TOKEN=$(curl -sf -u "admin:$PASSWORD" -H 'content-type: application/json' \
    -d '{"name": "bench"}' "$BASE/api/v1/tokens" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
api() { # method path [json]
    curl -sf -H "authorization: Bearer $TOKEN" -X "$1" -H 'content-type: application/json' \
        ${3:+-d "$3"} "$BASE$2"
}

echo "Creating $FLAGS flags..." >&2
ENV=/api/v1/projects/default/environments/production
CONFIG='{"enabled": true, "offVariant": "off",
  "rules": [{"id": "germany", "conditions": [{"attribute": "country", "operator": "in", "values": ["DE"]}],
             "serve": {"variant": "on"}}],
  "defaultServe": {"rollout": {"variants": [{"variant": "on", "weight": 50000}, {"variant": "off", "weight": 50000}]}}}'
for i in $(seq 1 "$FLAGS"); do
    api POST /api/v1/projects/default/flags \
        "{\"key\": \"flag-$i\", \"kind\": \"boolean\", \"variants\": [{\"name\": \"on\", \"value\": true}, {\"name\": \"off\", \"value\": false}]}" >/dev/null
    api PUT "$ENV/flags/flag-$i" "$CONFIG" >/dev/null
done
KEY=$(api POST "$ENV/keys" '{"kind": "client"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

script() { # path
    cat <<EOF
counter = 0
request = function()
  counter = counter + 1
  local body = '{"context":{"targetingKey":"user-' .. counter .. '","country":"FR"}}'
  return wrk.format("POST", "$1", {["x-api-key"] = "$KEY", ["content-type"] = "application/json"}, body)
end
EOF
}
script /ofrep/v1/evaluate/flags/flag-1 >"$WORK/one.lua"
script /ofrep/v1/evaluate/flags >"$WORK/bulk.lua"

run() { # label lua
    local out rps p50 p99
    out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_EACH}s" --latency -s "$2" "$BASE")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    if grep -q "Non-2xx" <<<"$out"; then
        echo "bench-ofrep: $1 got error responses:" >&2
        echo "$out" >&2
        exit 1
    fi
    printf '| %s | %s | %s | %s |\n' "$1" "$rps" "$p50" "$p99"
}

echo
echo "wrk -t1 -c$CONNECTIONS -d${SECONDS_EACH}s, $(nproc) cores"
echo
echo "| request | requests/s | p50 | p99 |"
echo "|---|---:|---:|---:|"
run "single flag" "$WORK/one.lua"
run "bulk, $FLAGS flags" "$WORK/bulk.lua"
