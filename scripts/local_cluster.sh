#!/usr/bin/env bash
# A real two-node Ray cluster on this machine, for trying (and testing) what runs on a cluster:
# a head raylet with custom resource {"node_a": 1} and a worker raylet with {"node_b": 1}, each
# with its own temp dir and ports, every address 127.0.0.1, Ray's token authentication on.
#
#   scripts/local_cluster.sh up [DIR]     # start it; writes DIR/env (default DIR: /tmp/alignloop-cluster)
#   source /tmp/alignloop-cluster/env     # RAY_ADDRESS, RAY_JOB_ADDRESS and the token for drivers
#   alignloop run configs/cluster-cpu.yaml                       # a driver attached with RAY_ADDRESS
#   ray job submit --address "$RAY_JOB_ADDRESS" --working-dir . -- alignloop run configs/cluster-cpu.yaml
#   scripts/local_cluster.sh down [DIR]   # stop both nodes: every process of this cluster, no other
#
# Ports (ALIGNLOOP_CLUSTER_PORT is the GCS port P; the rest follow it): dashboard and job
# submission P+1, client server P+2, a block of ports per node from P+10 and P+20, workers
# from P+100 and P+200. CPUs per node: ALIGNLOOP_CLUSTER_CPUS_A / _B (default 1 each).
set -euo pipefail

cmd=${1:-}
dir=${2:-/tmp/alignloop-cluster}
port=${ALIGNLOOP_CLUSTER_PORT:-6390}
cpus_a=${ALIGNLOOP_CLUSTER_CPUS_A:-1}
cpus_b=${ALIGNLOOP_CLUSTER_CPUS_B:-1}
ray_bin=${RAY:-ray}
python_bin=${PYTHON:-python3}

node_ports() {  # $1: first port of the node's block, $2: first worker port
  echo --node-ip-address 127.0.0.1 \
    --node-manager-port "$1" --object-manager-port "$(($1 + 1))" \
    --dashboard-agent-listen-port "$(($1 + 2))" --dashboard-agent-grpc-port "$(($1 + 3))" \
    --runtime-env-agent-port "$(($1 + 4))" --metrics-export-port "$(($1 + 5))" \
    --min-worker-port "$2" --max-worker-port "$(($2 + 99))"
}

# Ray binds and advertises 127.0.0.1 only in its single-machine mode
# (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which reaches every process it starts); in that mode its
# CLI refuses to add a second node, and in the other it rewrites 127.0.0.1 to the routable
# address. So the worker node is started through Ray's own CLI with those two checks lifted in
# that one process: every server it starts still binds loopback.
worker_start() {
  "$python_bin" -c '
import sys
from ray._private import ray_constants, services
ray_constants.ENABLE_RAY_CLUSTER = True  # allow `ray start --address` on this host
services.resolve_ip_for_localhost = lambda host: host  # keep --node-ip-address 127.0.0.1
from ray.scripts.scripts import main
sys.argv = ["ray", "start", *sys.argv[1:]]
main()
' "$@"
}

# This cluster's processes: Ray processes whose environment names this cluster's token (they
# inherit it from `ray start`, workers started later included). Never another Ray instance of
# this user, which `ray stop` would stop too.
cluster_pids() {
  local pid
  for pid in $(pgrep -u "$(id -u)" -f 'ray|raylet|gcs_server' || true); do
    [ "$pid" = $$ ] && continue
    { tr '\0' '\n' < "/proc/$pid/environ"; } 2>/dev/null | grep -qx "RAY_AUTH_TOKEN_PATH=$dir/auth_token" && echo "$pid"
  done
  return 0
}

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$dir/auth_token" RAY_USAGE_STATS_ENABLED=0

stop_cluster() {
  local pids
  pids=$(cluster_pids)
  [ -n "$pids" ] || return 0
  kill $pids 2>/dev/null || true
  for _ in $(seq 50); do
    [ -n "$(cluster_pids)" ] || return 0
    sleep 0.2
  done
  pids=$(cluster_pids)
  [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
}

# A node that failed to start can leave the head's processes (GCS, dashboard) holding their
# ports: stop whatever this cluster started before reporting the failure.
failed() {  # $1: the log to show
  tail -20 "$1" >&2
  stop_cluster
  exit 1
}

case "$cmd" in
up)
  # Ray's Unix sockets live under DIR/<node>/session_<date>_<pid>/sockets/, and a socket path
  # has at most 107 bytes.
  if [ ${#dir} -gt 32 ]; then
    echo "DIR $dir is too long for Ray's socket paths (at most 32 characters); use e.g. /tmp/alc-1" >&2
    exit 2
  fi
  mkdir -p "$dir"
  if [ -n "$(cluster_pids)" ]; then
    echo "a cluster is already up in $dir (scripts/local_cluster.sh down $dir first)" >&2
    exit 1
  fi
  # A token of its own, readable by this user only; drivers and jobs read it through
  # RAY_AUTH_TOKEN_PATH.
  (umask 077 && "$python_bin" -c "import secrets; print(secrets.token_hex(32))" > "$dir/auth_token")
  # shellcheck disable=SC2046
  "$ray_bin" start --head --port "$port" --num-cpus "$cpus_a" --resources '{"node_a": 1}' \
    --temp-dir "$dir/head" --include-dashboard true --dashboard-host 127.0.0.1 \
    --dashboard-port "$((port + 1))" --ray-client-server-port "$((port + 2))" \
    --disable-usage-stats $(node_ports "$((port + 10))" "$((port + 100))") > "$dir/head.log" 2>&1 \
    || failed "$dir/head.log"
  # shellcheck disable=SC2046
  worker_start --address "127.0.0.1:$port" --num-cpus "$cpus_b" --resources '{"node_b": 1}' \
    --temp-dir "$dir/worker" --disable-usage-stats \
    $(node_ports "$((port + 20))" "$((port + 200))") > "$dir/worker.log" 2>&1 \
    || failed "$dir/worker.log"
  {
    echo "export RAY_ADDRESS=127.0.0.1:$port"
    echo "export RAY_JOB_ADDRESS=http://127.0.0.1:$((port + 1))"
    echo "export RAY_AUTH_MODE=token"
    echo "export RAY_AUTH_TOKEN_PATH=$dir/auth_token"
    echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
  } > "$dir/env"
  echo "cluster up: head 127.0.0.1:$port (node_a, $cpus_a CPU), worker (node_b, $cpus_b CPU); source $dir/env"
  ;;
down)
  [ -n "$(cluster_pids)" ] || { echo "no cluster running in $dir"; exit 0; }
  stop_cluster
  echo "cluster down ($dir)"
  ;;
*)
  echo "usage: scripts/local_cluster.sh up|down [DIR]" >&2
  exit 2
  ;;
esac
