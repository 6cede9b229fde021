#!/usr/bin/env bash
# The local cluster on CPU, answering a chat question: set-up if needed (scripts/setup.sh is
# idempotent), a Release build of the worker and the CLI, a worker on a free loopback port with
# the default model, the question through `shardserve chat` (streamed), and the worker stopped.
#
#   scripts/demo.sh                       asks "What is the capital of France? ..."
#   scripts/demo.sh "Why is the sky blue?"
#   scripts/demo.sh --serve               keeps the worker running until Ctrl-C, printing its
#                                         endpoints
#
# Environment: BUILD_DIR (default build), SHARDSERVE_MODEL (default the SmolLM2 GGUF),
# THREADS (worker threads; default all cores), TEMPERATURE (default 0: greedy, reproducible),
# MAX_TOKENS (default 256: a bound on the answer).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

serve=0
prompt="What is the capital of France? Answer in one sentence."
case "${1:-}" in
  --serve) serve=1 ;;
  -h | --help) usage; exit 0 ;;
  "") ;;
  -*) echo "demo: unknown option $1" >&2; usage >&2; exit 2 ;;
  *) prompt="$1" ;;
esac

log() { printf '[demo] %s\n' "$*" >&2; }

build=${BUILD_DIR:-build}
model=${SHARDSERVE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}

scripts/setup.sh >&2

log "building the worker and the CLI (Release, Ninja) in $build/"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --target worker shardserve -j "${JOBS:-$(nproc)}" >&2

workdir=$(mktemp -d)
worker_log="$workdir/worker.log"
worker_pid=""
cleanup() {
  local rc=$?
  if [[ -n $worker_pid ]] && kill -0 "$worker_pid" 2>/dev/null; then
    kill -TERM "$worker_pid" 2>/dev/null || true
    wait "$worker_pid" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 && -s $worker_log ]]; then
    echo "--- worker log ($worker_log) ---" >&2
    tail -n 20 "$worker_log" >&2
  fi
  rm -rf "$workdir"
  exit "$rc"
}
trap cleanup EXIT
if ((serve)); then
  trap 'exit 0' INT TERM  # Ctrl-C is how --serve ends
else
  trap 'exit 130' INT TERM
fi

# Port 0: the worker picks free ports and prints "listening on HOST:PORT" and "http listening on
# HOST:PORT" (/metrics, /live, /ready), then, once the model is loaded and warmed up, "serving NAME".
worker_args=(--model "$model" --address 127.0.0.1:0 --http-address 127.0.0.1:0)
[[ -n ${THREADS:-} ]] && worker_args+=(--threads "$THREADS")
if ((serve)); then
  exec {worker_out}< <(exec "$build/worker/worker" "${worker_args[@]}" 2> >(tee "$worker_log" >&2))
else
  exec {worker_out}< <(exec "$build/worker/worker" "${worker_args[@]}" 2>"$worker_log")
fi
worker_pid=$!
line=""
read -r -t 60 -u "$worker_out" line || true
if [[ $line != "listening on "* ]]; then
  log "the worker did not start"
  exit 1
fi
address=${line#listening on }
read -r -t 60 -u "$worker_out" line || true
http_address=${line#http listening on }
log "worker on $address, metrics on http://$http_address/metrics (log: $worker_log)"

if ((serve)); then
  read -r -t 300 -u "$worker_out" line || true
  if [[ $line != "serving "* ]]; then
    log "the worker did not become ready"
    exit 1
  fi
  cat <<EOF

shardserve is serving ${line#serving } on CPU:
  worker  $address   gRPC: shardserve.worker.v1.Worker, shardserve.chat.v1.Chat, grpc.health.v1.Health

Try:    $build/cli/shardserve chat --target $address "Hello! Who are you?"
        $build/cli/shardserve chat --target $address          (interactive)
Ctrl-C stops it.
EOF
  # Ctrl-C reaches the worker too (same process group): it drains and exits.
  wait "$worker_pid" || true
  worker_pid=""
  exit 0
fi

# `--wait`: the CLI waits (grpc.health.v1 Watch) until the worker serves, then asks.
log "asking: $prompt"
"$build/cli/shardserve" chat --target "$address" --wait 300 --temperature "${TEMPERATURE:-0}" \
  --max-tokens "${MAX_TOKENS:-256}" "$prompt"
