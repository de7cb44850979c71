#!/usr/bin/env bash
# Run a command against a real Milvus standalone server (PyPI milvus==2.3.5) started inside a
# private network namespace: the server listens on every interface, so it must not be reachable
# from outside. The command runs inside the same namespace with LOFI_MILVUS=127.0.0.1:19530.
#   scripts/milvus.sh CMD [ARGS...]
set -euo pipefail
VENV=${LOFI_MILVUS_VENV:-$HOME/.cache/lofi-milvus-venv}
if [ ! -x "$VENV/bin/milvus-server" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q milvus==2.3.5
fi
NS=lofi-milvus-$$
DATA=$(mktemp -d /tmp/lofi-milvus-XXXXXX)
cleanup() {
  ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true
  sleep 1
  ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns delete "$NS" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" "$VENV/bin/milvus-server" --data "$DATA" >"$DATA.log" 2>&1 &
for _ in $(seq 1 120); do
  if ip netns exec "$NS" bash -c 'echo > /dev/tcp/127.0.0.1/19530' 2>/dev/null; then break; fi
  sleep 1
done
ip netns exec "$NS" bash -c 'echo > /dev/tcp/127.0.0.1/19530' || { echo "Milvus did not start; log:" >&2; tail -30 "$DATA.log" >&2; exit 1; }
sleep 3
ip netns exec "$NS" env LOFI_MILVUS=127.0.0.1:19530 LOFI_REQUIRE_MILVUS=1 "$@"
