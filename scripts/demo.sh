#!/usr/bin/env bash
# The local cluster on CPU, answering a chat question through the gateway: set-up if needed
# (scripts/setup.sh is idempotent), a Release build of hub_sync, the worker, the gateway and the
# CLI; hub_sync on the shared cache, the default model imported through it (`shardserve pull
# --from-file` the SmolLM2 GGUF `--as HuggingFaceTB/SmolLM2-135M-Instruct`, the way a machine
# without Hub access fills the cache) and quantized; two workers on free loopback ports serving
# that artifact from the cache; the gateway in front of them; the question through `shardserve
# chat --target GATEWAY` (gRPC, streamed), then the same question through the OpenAI-compatible
# API with curl (`"stream": true`: the raw server-sent events, then the text they carry), and
# everything stopped.
#
#   scripts/demo.sh                       asks "What is the capital of France? ..."
#   scripts/demo.sh "Why is the sky blue?"
#   scripts/demo.sh --serve               keeps hub_sync (Hub mirror http://127.0.0.1:8001, gRPC
#                                         127.0.0.1:50071), the gateway (HTTP 127.0.0.1:8000,
#                                         gRPC 127.0.0.1:50051) and both workers running until
#                                         Ctrl-C, printing the endpoints
#
# Environment: BUILD_DIR (default build), SHARDSERVE_MODEL (the GGUF imported; default the
# SmolLM2 one), SHARDSERVE_CACHE (the cache; default models/cache), QUANTIZATION (int8, int4,
# nf4, or "none" for the bf16 snapshot; default int8), THREADS (per worker; default half the
# cores), TEMPERATURE (default 0: greedy, reproducible), MAX_TOKENS (default 256: a bound on the
# answer), HTTP_ADDRESS / GRPC_ADDRESS (--serve's gateway addresses).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }

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
repo=HuggingFaceTB/SmolLM2-135M-Instruct
cache=${SHARDSERVE_CACHE:-$(pwd)/models/cache}
quantization=${QUANTIZATION:-int8}
[[ $quantization == none ]] && quantization=""
threads=${THREADS:-$(($(nproc) / 2 > 0 ? $(nproc) / 2 : 1))}
temperature=${TEMPERATURE:-0}
max_tokens=${MAX_TOKENS:-256}

scripts/setup.sh >&2

log "building hub_sync, the worker, the gateway and the CLI (Release, Ninja) in $build/"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --target hub_sync worker gateway shardserve -j "${JOBS:-$(nproc)}" >&2

source scripts/lib/processes.sh  # start_process, wait_line, wait_ready; all stopped on exit
if ((serve)); then
  trap_exit 0  # Ctrl-C is how --serve ends
else
  trap_exit 130
fi

cli="$build/cli/shardserve"

# hub_sync on the shared cache: the Hub mirror (HTTP) and the HubSync API (gRPC).
if ((serve)); then
  hub_grpc=127.0.0.1:50071
  hub_http=127.0.0.1:8001
else
  hub_grpc=127.0.0.1:0
  hub_http=127.0.0.1:0
fi
mkdir -p "$cache"
start_process hub_sync "$build/hub_sync/hub_sync" --cache-dir "$cache" --grpc-address "$hub_grpc" \
  --http-address "$hub_http"
hub_grpc=$(wait_line hub_sync "grpc listening on " 30)
hub_http=$(wait_line hub_sync "http listening on " 30)
log "hub_sync: gRPC $hub_grpc, Hub mirror http://$hub_http, cache $cache"

# The default model enters the cache through hub_sync: imported from its GGUF in Hugging Face
# form (the same file always gives the same commit), then quantized. Both are skipped when the
# cache already holds them.
log "importing $model as $repo${quantization:+ and quantizing it ($quantization)}"
"$cli" pull --target "$hub_grpc" --from-file "$model" --as "$repo" \
  ${quantization:+--quantize "$quantization"}

# Two workers on port 0: each prints "listening on HOST:PORT", "http listening on HOST:PORT"
# (/metrics, /live, /ready), then, once the model is loaded and warmed up, "serving NAME".
workers=()
for name in worker1 worker2; do
  start_process "$name" "$build/worker/worker" --model "$repo" --cache-dir "$cache" \
    ${quantization:+--quantization "$quantization"} --address 127.0.0.1:0 \
    --http-address 127.0.0.1:0 --threads "$threads"
  address=$(wait_line "$name" "listening on " 60)
  workers+=("$address")
done
served=""
for name in worker1 worker2; do
  served=$(wait_line "$name" "serving " 300)
done
log "workers on ${workers[0]} and ${workers[1]}, serving $served, $threads thread(s) each"

# The gateway: the model routed over both workers. Free ports, or the well-known ones to serve.
if ((serve)); then
  grpc_address=${GRPC_ADDRESS:-127.0.0.1:50051}
  http_address=${HTTP_ADDRESS:-127.0.0.1:8000}
else
  grpc_address=127.0.0.1:0
  http_address=127.0.0.1:0
fi
gateway_args=(--grpc-address "$grpc_address" --http-address "$http_address"
  --model "$served=${workers[0]},${workers[1]}")
if ((serve)); then
  start_process --tee gateway "$build/gateway/gateway" "${gateway_args[@]}"
else
  start_process gateway "$build/gateway/gateway" "${gateway_args[@]}"
fi
gateway_pid=$last_pid
grpc_address=$(wait_line gateway "grpc listening on " 30)
http_address=$(wait_line gateway "http listening on " 30)
log "gateway: gRPC $grpc_address, HTTP $http_address"

if ((serve)); then
  # Both workers are up; give the gateway's first health checks a moment, then show them.
  wait_ready "$http_address" 30
  sleep 1
  "$cli" status --target "$grpc_address" || true
  cat <<EOF

shardserve is serving $served on CPU through the gateway:
  gateway  gRPC $grpc_address   shardserve.chat.v1.Chat, shardserve.gateway.v1.Gateway, grpc.health.v1
           HTTP http://$http_address   /v1/chat/completions, /v1/completions, /v1/models, /metrics, /live, /ready
  workers  ${workers[0]}, ${workers[1]}   (logs in $workdir)
  hub_sync gRPC $hub_grpc   shardserve.hub.v1.HubSync (shardserve pull / models)
           HTTP http://$hub_http   a Hub mirror of $cache (HF_ENDPOINT=http://$hub_http), /metrics

Try:    $cli chat --target $grpc_address "Hello! Who are you?"
        $cli chat --target $grpc_address          (interactive)
        $cli status --target $grpc_address
        $cli models --target $hub_grpc
        $cli pull --target $hub_grpc $repo --quantize int4,nf4
        HF_ENDPOINT=http://$hub_http python3 -c 'import huggingface_hub; print(huggingface_hub.snapshot_download("$repo"))'
        curl -sN http://$http_address/v1/chat/completions -H 'Content-Type: application/json' \\
          -d '{"model": "$served", "messages": [{"role": "user", "content": "Hi!"}], "stream": true}'
        python3 -c 'import openai; print(openai.OpenAI(base_url="http://$http_address/v1", api_key="-").chat.completions.create(model="$served", messages=[{"role": "user", "content": "Hi!"}]).choices[0].message.content)'
Ctrl-C stops it.
EOF
  wait "$gateway_pid" || true
  exit 0
fi

# `--wait`: the CLI waits (grpc.health.v1 Watch) until the gateway serves the chat service, then
# asks; the gateway picks a worker.
log "asking through the gateway (gRPC, shardserve chat): $prompt"
"$cli" chat --target "$grpc_address" --wait 300 --temperature "$temperature" \
  --max-tokens "$max_tokens" "$prompt"

# The same request through the OpenAI-compatible HTTP API, streamed as server-sent events.
body=$(python3 -c 'import json, sys
print(json.dumps({"model": sys.argv[1], "messages": [{"role": "user", "content": sys.argv[2]}],
                  "temperature": float(sys.argv[3]), "max_tokens": int(sys.argv[4]),
                  "stream": True}))' "$served" "$prompt" "$temperature" "$max_tokens")
log "the same through the OpenAI API: curl -sN http://$http_address/v1/chat/completions -d '$body'"
curl -sSN --fail-with-body "http://$http_address/v1/chat/completions" \
  -H 'Content-Type: application/json' -d "$body" | tee "$workdir/sse.txt" | grep -v '^$'
log "the text those events carry:"
python3 -c 'import json, sys
text = ""
for line in open(sys.argv[1]):
    if line.startswith("data: {"):
        for choice in json.loads(line[6:]).get("choices", []):
            text += choice.get("delta", {}).get("content") or ""
print(text)' "$workdir/sse.txt"
