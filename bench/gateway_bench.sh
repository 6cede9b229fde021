#!/usr/bin/env bash
# Runs bench/gateway_bench against a local cluster it starts on free loopback ports: two workers
# (the default model), gateway A routing the model to worker 1 only (the latency comparison:
# both paths reach the same worker) and gateway B routing it over both workers (the routing
# rate). Everything is stopped on exit. Extra arguments go to gateway_bench.
#
#   bench/gateway_bench.sh                       build (Release) and run with the defaults
#   bench/gateway_bench.sh --tokens 64 --pairs 50
#
# Environment: BUILD_DIR (default build), SHARDSERVE_MODEL (default the SmolLM2 GGUF), THREADS
# (per worker; default 1, so two workers and the gateway fit a small machine), JOBS (build).
set -euo pipefail
cd "$(dirname "$0")/.."

build=${BUILD_DIR:-build}
model=${SHARDSERVE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
threads=${THREADS:-1}

log() { printf '[gateway_bench] %s\n' "$*" >&2; }

if [[ ! -f $build/build.ninja ]]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$build" --target worker gateway gateway_bench -j "${JOBS:-$(nproc)}" >&2

workdir=$(mktemp -d)
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ $rc -ne 0 ]]; then
    for f in "$workdir"/*.log; do
      [[ -s $f ]] || continue
      echo "--- $(basename "$f") ---" >&2
      tail -n 5 "$f" >&2
    done
  fi
  rm -rf "$workdir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The rest of the first line of `file` that starts with `prefix`, waiting up to `seconds`.
wait_line() {
  local file=$1 prefix=$2 seconds=$3 line
  local deadline=$((SECONDS + seconds))
  while ((SECONDS < deadline)); do
    line=$(grep -m1 "^$prefix" "$file" 2>/dev/null || true)
    if [[ -n $line ]]; then
      printf '%s\n' "${line#"$prefix"}"
      return 0
    fi
    sleep 0.1
  done
  log "no '$prefix' line from $(basename "$file" .out) within ${seconds}s"
  return 1
}

# Workers on port 0, no HTTP side (its default port would clash between the two).
for name in worker1 worker2; do
  "$build/worker/worker" --model "$model" --address 127.0.0.1:0 --http-address "" \
    --threads "$threads" >"$workdir/$name.out" 2>"$workdir/$name.log" &
  pids+=($!)
done
worker1=$(wait_line "$workdir/worker1.out" "listening on " 60)
worker2=$(wait_line "$workdir/worker2.out" "listening on " 60)
served=$(wait_line "$workdir/worker1.out" "serving " 300)
wait_line "$workdir/worker2.out" "serving " 300 >/dev/null
log "workers: $worker1 $worker2 serving $served"

start_gateway() {
  local name=$1 endpoints=$2
  "$build/gateway/gateway" --grpc-address 127.0.0.1:0 --http-address 127.0.0.1:0 \
    --model "$served=$endpoints" --health-interval-seconds 0.2 --status-interval-seconds 0.1 \
    >"$workdir/$name.out" 2>"$workdir/$name.log" &
  pids+=($!)
}
start_gateway gateway_a "$worker1"
gateway_a_pid=${pids[-1]}
start_gateway gateway_b "$worker1,$worker2"
gateway_b_pid=${pids[-1]}
gateway_a=$(wait_line "$workdir/gateway_a.out" "grpc listening on " 30)
gateway_b=$(wait_line "$workdir/gateway_b.out" "grpc listening on " 30)
for name in gateway_a gateway_b; do
  http=$(wait_line "$workdir/$name.out" "http listening on " 30)
  deadline=$((SECONDS + 30))
  until curl -fsS "http://$http/ready" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "$name never became ready"
      exit 1
    fi
    sleep 0.1
  done
done
sleep 1  # a few health rounds (0.2 s each): gateway B sees both workers, not just one
log "gateway A $gateway_a -> $worker1; gateway B $gateway_b -> $worker1, $worker2"
log "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"

"$build/bench/gateway_bench" --worker "$worker1" --gateway "$gateway_a" \
  --gateway-pid "$gateway_a_pid" --routing-gateway "$gateway_b" \
  --routing-gateway-pid "$gateway_b_pid" "$@"

log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
