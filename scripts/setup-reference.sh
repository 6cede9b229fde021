#!/usr/bin/env bash
# Installs the slow reference tools: llama.cpp through llama-cpp-python, compiled from source for
# this CPU (GGML_NATIVE: AVX2 / AVX-512 / VNNI as the machine has them). Needed only to regenerate
# the fidelity goldens (tests/fixtures/fidelity/make_reference.py, make_reference_hf.py: llama.cpp
# and HF transformers + torch) and to run the llama.cpp side of
# the CPU benchmark (bench/cpu_bench.py). Not part of scripts/setup.sh or CI: the compile takes
# 10-20 minutes on 2 cores. Safe to run again: does nothing when the pinned version is present.
#
#   scripts/setup-reference.sh
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON_VERSION=0.3.36
PYTHON=${PYTHON:-python3}

log() { printf '[setup-reference] %s\n' "$*"; }

# The fixture script's other packages, at the versions the committed goldens were made with.
$PYTHON -m pip install --quiet -r tests/requirements.txt

if $PYTHON -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '${LLAMA_CPP_PYTHON_VERSION}')" \
    2>/dev/null; then
  log "llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION}: present"
else
  log "compiling llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION} (llama.cpp, native CPU flags, no GPU)"
  CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    $PYTHON -m pip install --no-binary llama-cpp-python --no-cache-dir \
    "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}"
fi
# HF transformers in f32: the reference for the engine's f32 path (make_reference_hf.py). PyPI's
# torch wheel pulls its CUDA libraries (about 3 GB); only the CPU is used.
TORCH_VERSION=2.9.1
TRANSFORMERS_VERSION=5.23.0
if $PYTHON -c "import torch, transformers, sys; sys.exit(not (torch.__version__.startswith('${TORCH_VERSION}') and transformers.__version__ == '${TRANSFORMERS_VERSION}'))" \
    2>/dev/null; then
  log "torch ${TORCH_VERSION}, transformers ${TRANSFORMERS_VERSION}: present"
else
  log "installing torch ${TORCH_VERSION} and transformers ${TRANSFORMERS_VERSION}"
  $PYTHON -m pip install --quiet "torch==${TORCH_VERSION}" "transformers==${TRANSFORMERS_VERSION}"
fi
$PYTHON - <<'PY'
import llama_cpp
print("[setup-reference] llama_cpp", llama_cpp.__version__, "|",
      llama_cpp.llama_print_system_info().decode().strip())
PY
