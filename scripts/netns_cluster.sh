#!/usr/bin/env bash
# A multi-host Ray cluster on one Linux machine: each host a network namespace with its own IP
# (198.18.0.0/15, the range set aside for benchmarking networks) and its own hostname, joined by
# a bridge. grid-serve runs on it as on real machines: `ray start --head` on the first host,
# `ray start --address` on the others, the app deployed with `serve run` on the head.
# Nothing leaves the machine: the namespaces have no route out. Needs root and iproute2.
#
#   scripts/netns_cluster.sh up                  three hosts: gpu-master (head), gpu1, gpu2 (1 GPU each)
#   scripts/netns_cluster.sh add N [LABELS]      one more host, 198.18.0.N, hostname worker-N, 2 CPUs; no
#                                                labels but LABELS (k=v,...), as a KubeRay pod comes up
#   scripts/netns_cluster.sh exec HOST CMD...    run CMD on host HOST (1 = the head), RAY_ADDRESS set
#   scripts/netns_cluster.sh kill-raylet HOST    kill -9 that host's raylet (a machine lost mid-job)
#   scripts/netns_cluster.sh down                stop every process in the namespaces, remove them
#   scripts/netns_cluster.sh run CMD...          up, CMD on the head, down (whatever happens)
#
# The app answers on the head's loopback (http://127.0.0.1:8000), so clients run there:
#   scripts/netns_cluster.sh exec 1 grid distribute test --tasks 99
# A failed `up` tears down what it made (trap). `down` kills only the processes inside these
# namespaces (never `ray stop`, which would stop every Ray cluster on the machine).
# Settings: GRID_NETNS_PREFIX (gs), GRID_NETNS_NET (198.18.0: the /24 the hosts live in),
# GRID_NETNS_STATE (/tmp/grid-netns-<prefix>: Ray's temp dir, logs, the generated cluster file).
set -Eeuo pipefail  # -E: the ERR trap of `up` also fires inside functions

REPO=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${GRID_NETNS_PREFIX:-gs}
NET=${GRID_NETNS_NET:-198.18.0}
STATE=${GRID_NETNS_STATE:-/tmp/grid-netns-$PREFIX}
BIN=${GRID_NETNS_BIN:-$REPO/.venv/bin}
BRIDGE=$PREFIX-br
HEAD_IP=$NET.1
# a killed raylet is marked dead after ~3 s (Ray's default is ~15 s): tests need not wait long
SYSTEM_CONFIG='{"health_check_initial_delay_ms":1000,"health_check_period_ms":1000,"health_check_timeout_ms":5000,"health_check_failure_threshold":3}'
# Ray turns token auth on for `ray start --head` and drivers where ~/.ray/auth_token exists, but a
# joining raylet must be told: so every process here gets the same mode, token where a token exists.
AUTH_MODE=${RAY_AUTH_MODE:-$([ -f "$HOME/.ray/auth_token" ] && echo token || echo disabled)}
# host index -> "labels CPUs GPUs"; the head is 1 (198.18.0.1). The GPU hosts also share a group
# label, as the pods of one KubeRay worker group do.
declare -A HOSTS=([1]="grid.io/node=gpu-master 2 0" [2]="grid.io/node=gpu1,grid.io/group=gpu-workers 2 1"
                  [3]="grid.io/node=gpu2,grid.io/group=gpu-workers 2 1")

case "$NET" in 198.18.*|198.19.*) ;; *) echo "GRID_NETNS_NET must lie in 198.18.0.0/15, got $NET" >&2; exit 2 ;; esac

ns() { echo "$PREFIX-h$1"; }

# Run a command on host $1, inside all its namespaces, with what Ray needs there (the auth mode, our
# own temp dirs, the head's address).
on_host() {
  local host=$1; shift
  nsenter --target "$(cat "$STATE/h$host.pid")" --net --pid --uts --mount --wd="$PWD" \
    env RAY_AUTH_MODE="$AUTH_MODE" RAY_TMPDIR="$STATE/tmp" RAY_USAGE_STATS_ENABLED=0 RAY_ADDRESS="$HEAD_IP:6379" \
    PATH="$BIN:$PATH" "$@"
}

# A host: its own network namespace (an IP on the bridge), and its own hostname and process table
# (UTS and PID namespaces): Ray finds "the local raylet" by listing processes, as on a real machine.
# A `sleep` is the host's first process; every process of the host dies with it.
make_host() {
  local host=$1 hostname=$2 name pid
  name=$(ns "$host")
  ip netns add "$name"
  ip link add "$PREFIX-v$host" type veth peer name eth0 netns "$name"
  ip link set "$PREFIX-v$host" master "$BRIDGE" up
  ip -n "$name" addr add "$NET.$host/24" dev eth0
  ip -n "$name" link set eth0 up
  ip -n "$name" link set lo up
  ip netns exec "$name" unshare --pid --fork --mount-proc --uts \
    sh -c 'echo "$0" >/proc/sys/kernel/hostname && exec sleep infinity' "$hostname" </dev/null >/dev/null 2>&1 &
  for _ in $(seq 1 50); do
    pid=$(for p in $(ip netns pids "$name"); do if [ "$(cat "/proc/$p/comm")" = sleep ]; then echo "$p"; fi; done)
    [ -n "$pid" ] && break
    sleep 0.1
  done
  [ -n "$pid" ] || { echo "netns cluster: host $host did not start" >&2; return 1; }
  echo "$pid" >"$STATE/h$host.pid"
}

start_ray() {
  local host=$1; shift
  on_host "$host" ray start --node-ip-address "$NET.$host" --memory $((4 * 1024 ** 3)) \
    --object-store-memory $((200 * 1024 ** 2)) --disable-usage-stats "$@" >>"$STATE/ray-h$host.log" 2>&1
}

write_configs() {
  # the hosts' cluster file (hosts by IP) and serve_config.yaml's application pointed at it
  "$BIN/python" - "$REPO/serve_config.yaml" "$STATE" "$NET" <<'EOF'
import sys, yaml
serve_config, state, net = sys.argv[1:]
sharing = {"can_share": True, "max_share_cpu": 1, "max_share_memory_gb": 1, "max_share_gpu": 0}
nodes = [dict(name="gpu-master", host=f"{net}.1", role="master", cpu_count=2, gpu_count=0, memory_gb=4),
         dict(name="gpu1", host=f"{net}.2", cpu_count=2, gpu_count=1, memory_gb=4),
         dict(name="gpu2", host=f"{net}.3", cpu_count=2, gpu_count=1, memory_gb=4)]
cluster = {"name": "netns", "nodes": [{**n, "resource_sharing": sharing} for n in nodes],
           "resource_sharing": {"enabled": True, "monitoring_interval_seconds": 1, "allocation_timeout_minutes": 1}}
with open(f"{state}/cluster.yaml", "w") as out:
    yaml.safe_dump(cluster, out, sort_keys=False)
config = yaml.safe_load(open(serve_config))
config["applications"][0]["args"]["cluster_config"] = f"{state}/cluster.yaml"
with open(f"{state}/serve_config.yaml", "w") as out:
    yaml.safe_dump(config, out, sort_keys=False)
EOF
}

wait_healthy() {
  for _ in $(seq 1 120); do
    if on_host 1 python -c 'import httpx, sys; sys.exit(httpx.get("http://127.0.0.1:8000/v1/health").json()["status"] != "ok")' \
        >/dev/null 2>&1; then
      return 0
    fi
    sleep 2
  done
  echo "netns cluster: the app did not become healthy; see $STATE/serve.log" >&2
  return 1
}

up() {
  [ "$(id -u)" -eq 0 ] || { echo "netns cluster: needs root (network namespaces)" >&2; exit 2; }
  if ip netns list | grep -q "^$PREFIX-h"; then echo "netns cluster $PREFIX is already up; down first" >&2; exit 2; fi
  trap 'echo "netns cluster: up failed; tearing down" >&2; down' ERR
  mkdir -p "$STATE/tmp"
  ip link add "$BRIDGE" type bridge
  ip link set "$BRIDGE" up
  local host labels cpus gpus
  for host in 1 2 3; do make_host "$host" "$PREFIX-host$host"; done
  read -r labels cpus gpus <<<"${HOSTS[1]}"
  start_ray 1 --head --port 6379 --temp-dir "$STATE/ray" --include-dashboard=false \
    --num-cpus "$cpus" --num-gpus "$gpus" --labels "$labels" --system-config "$SYSTEM_CONFIG"
  for host in 2 3; do
    read -r labels cpus gpus <<<"${HOSTS[$host]}"
    start_ray "$host" --address "$HEAD_IP:6379" --num-cpus "$cpus" --num-gpus "$gpus" \
      --labels "$labels"
  done
  write_configs
  (cd "$REPO" && on_host 1 serve run --non-blocking "$STATE/serve_config.yaml" >"$STATE/serve.log" 2>&1)
  wait_healthy
  trap - ERR
  echo "netns cluster $PREFIX is up: hosts $NET.1-3, app http://127.0.0.1:8000 on host 1 (exec 1 ...)"
}

add() {
  local host=$1 labels=${2:-}
  make_host "$host" "worker-$host"
  start_ray "$host" --address "$HEAD_IP:6379" --num-cpus 2 ${labels:+--labels "$labels"}
}

kill_raylet() {
  local pid
  for pid in $(ip netns pids "$(ns "$1")"); do
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = raylet ]; then kill -KILL "$pid"; fi
  done
}

# Every process inside our namespaces: TERM, a few seconds' grace, then KILL; then the links.
down() {
  trap - ERR
  local name pids
  local names
  names=$(ip netns list | awk '{print $1}' | grep "^$PREFIX-h[0-9]*$" || true)
  for name in $names; do ip netns pids "$name" | xargs -r kill -TERM 2>/dev/null || true; done
  for _ in $(seq 1 20); do
    pids=$(for name in $names; do ip netns pids "$name"; done)
    [ -z "$pids" ] && break
    sleep 0.25
  done
  for name in $names; do ip netns pids "$name" | xargs -r kill -KILL 2>/dev/null || true; done
  for name in $names; do
    for _ in $(seq 1 20); do [ -z "$(ip netns pids "$name")" ] && break; sleep 0.1; done
    ip netns del "$name"
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  for name in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^$PREFIX-v[0-9]*$" || true); do
    ip link del "$name" 2>/dev/null || true  # the host side of a veth goes with its namespace, a moment later
  done
  rm -rf "$STATE/ray" "$STATE/tmp" "$STATE"/h*.pid
}

command=${1:-}
shift || true
case "$command" in
  up) up ;;
  add) add "$@" ;;
  exec) on_host "$@" ;;
  kill-raylet) kill_raylet "$1" ;;
  down) down ;;
  run) trap down EXIT; up; on_host 1 "$@" ;;
  *) sed -n '2,21p' "$0" >&2; exit 2 ;;
esac
