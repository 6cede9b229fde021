#!/usr/bin/env bash
# Download throughput of hub_sync against a plain parallel curl of the same files, in one run,
# from the local test Hub (tests/fixtures/hub_server.py) serving the default model's HF-form
# repository (269 MB: one 269 MB model.safetensors and five small files). Each round downloads
# into an empty folder / an empty cache and the page cache is warm for the server's files, so
# both sides measure the transfer and the writes, not the source disk:
#   curl      every file with `curl -sf -o` at once (xargs -P CONNECTIONS), no verification;
#             also shown with an fsync of its files (`sync FILES`) inside the timing, since
#             hub_sync makes every blob durable before it names it
#   hub_sync  `shardserve pull` into a fresh cache: resolve, parallel ranges, sha256 / git sha1
#             verification of every file, rename into blobs/, snapshot links, ref
# Prints one line per round and the medians, with hub_sync / curl. Then the quantization
# throughput per scheme (bench/quantize_bench on the bf16 snapshot).
#
#   bench/hub_sync_bench.sh            3 rounds
#   ROUNDS=5 bench/hub_sync_bench.sh
#
# Environment: BUILD_DIR (default build), ROUNDS (default 3), CONNECTIONS (default 8).
set -euo pipefail
cd "$(dirname "$0")/.."

build=${BUILD_DIR:-build}
rounds=${ROUNDS:-3}
connections=${CONNECTIONS:-8}
repo=HuggingFaceTB/SmolLM2-135M-Instruct

log() { printf '[hub_sync_bench] %s\n' "$*" >&2; }

if [[ ! -f $build/build.ninja ]]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$build" --target hub_sync shardserve quantize_bench -j "${JOBS:-$(nproc)}" >&2

source scripts/lib/processes.sh  # start_process, wait_line; all stopped on exit (workdir)
trap_exit 130

python3 tests/fixtures/make_hub_repos.py "$workdir/repos" >/dev/null
start_process hub python3 tests/fixtures/hub_server.py --repo "$repo=$workdir/repos/smollm2" \
  --port 0
hub=$(wait_line hub "hub listening on " 60)
endpoint="http://$hub"

# The file list and sizes, as the Hub's tree API gives them.
python3 - "$endpoint" "$repo" >"$workdir/files.tsv" <<'PY'
import json, sys, urllib.request
endpoint, repo = sys.argv[1:]
rev = json.load(urllib.request.urlopen(f"{endpoint}/api/models/{repo}/revision/main"))
tree = json.load(urllib.request.urlopen(f"{endpoint}/api/models/{repo}/tree/{rev['sha']}?recursive=true"))
for entry in tree:
    if entry["type"] == "file":
        print(f"{endpoint}/{repo}/resolve/{rev['sha']}/{entry['path']}\t{entry['size']}")
PY
total_bytes=$(awk -F'\t' '{s += $2} END {print s}' "$workdir/files.tsv")
files=$(wc -l <"$workdir/files.tsv")
log "$files files, $total_bytes bytes, $connections connections"
# Warm the server's page cache once.
cat "$workdir/repos/smollm2"/* >/dev/null

start_process hub_sync "$build/hub_sync/hub_sync" --cache-dir "$workdir/cache" \
  --endpoint "$endpoint" --grpc-address 127.0.0.1:0 --http-address 127.0.0.1:0 \
  --connections "$connections" --allow-patterns '*'
hub_sync=$(wait_line hub_sync "grpc listening on " 30)

now() { date +%s.%N; }
mbps() { python3 -c "import sys; print(f'{$total_bytes / ($2 - $1) / 1e6:.1f}')" -- "$@"; }

curl_rates=()
curl_sync_rates=()
sync_rates=()
for ((round = 1; round <= rounds; round++)); do
  rm -rf "$workdir/curl" && mkdir -p "$workdir/curl"
  start=$(now)
  cut -f1 "$workdir/files.tsv" | awk '{print NR "\t" $0}' |
    xargs -P "$connections" -L 1 sh -c 'curl -sf -o "$0/$1" "$2"' "$workdir/curl"
  end=$(now)
  sync "$workdir"/curl/*
  synced=$(now)
  curl_rate=$(mbps "$start" "$end")
  curl_sync_rate=$(mbps "$start" "$synced")

  rm -rf "$workdir/cache/hub"
  start=$(now)
  "$build/cli/shardserve" pull -q --target "$hub_sync" "$repo" >/dev/null
  end=$(now)
  sync
  sync_rate=$(mbps "$start" "$end")
  curl_rates+=("$curl_rate")
  curl_sync_rates+=("$curl_sync_rate")
  sync_rates+=("$sync_rate")
  printf 'round %d: curl %s MB/s (with fsync %s MB/s), hub_sync %s MB/s\n' "$round" \
    "$curl_rate" "$curl_sync_rate" "$sync_rate"
done
python3 - "${curl_rates[*]}" "${curl_sync_rates[*]}" "${sync_rates[*]}" <<'PY'
import statistics, sys
curl, curl_sync, hub = (statistics.median(float(x) for x in arg.split()) for arg in sys.argv[1:4])
print(f"download median: curl {curl:.1f} MB/s, hub_sync {hub:.1f} MB/s, "
      f"hub_sync / curl = {hub / curl:.2f} (target >= 0.90); "
      f"curl with fsync {curl_sync:.1f} MB/s, hub_sync / that = {hub / curl_sync:.2f}")
PY

log "quantization throughput (MB/s of bf16 source weights)"
"$build/bench/quantize_bench" --model models/SmolLM2-135M-Instruct
