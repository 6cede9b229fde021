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

source scripts/lib/processes.sh  # start_process, wait_line, wait_ready; all stopped on exit
trap_exit 130

# Workers on port 0, no HTTP side (its default port would clash between the two).
for name in worker1 worker2; do
  start_process "$name" "$build/worker/worker" --model "$model" --address 127.0.0.1:0 \
    --http-address "" --threads "$threads"
done
worker1=$(wait_line worker1 "listening on " 60)
worker2=$(wait_line worker2 "listening on " 60)
served=$(wait_line worker1 "serving " 300)
wait_line worker2 "serving " 300 >/dev/null
log "workers: $worker1 $worker2 serving $served"

start_gateway() {
  local name=$1 endpoints=$2
  start_process "$name" "$build/gateway/gateway" --grpc-address 127.0.0.1:0 \
    --http-address 127.0.0.1:0 --model "$served=$endpoints" --health-interval-seconds 0.2 \
    --status-interval-seconds 0.1
}
start_gateway gateway_a "$worker1"
gateway_a_pid=$last_pid
start_gateway gateway_b "$worker1,$worker2"
gateway_b_pid=$last_pid
gateway_a=$(wait_line gateway_a "grpc listening on " 30)
gateway_b=$(wait_line gateway_b "grpc listening on " 30)
for name in gateway_a gateway_b; do
  wait_ready "$(wait_line "$name" "http listening on " 30)" 30
done
sleep 1  # a few health rounds (0.2 s each): gateway B sees both workers, not just one
log "gateway A $gateway_a -> $worker1; gateway B $gateway_b -> $worker1, $worker2"
log "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"

"$build/bench/gateway_bench" --worker "$worker1" --gateway "$gateway_a" \
  --gateway-pid "$gateway_a_pid" --routing-gateway "$gateway_b" \
  --routing-gateway-pid "$gateway_b_pid" "$@"

log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
