#!/usr/bin/env python3
"""Writes the seed corpus of quantized_linear_fuzzer: one small layer per artifact scheme.

The files are structurally valid hub_sync artifact tensors (names, dtypes and shapes as
worker/weights/quant_formats.h defines them) holding random codes and scales: the fuzzer checks
that reading them never goes outside the input, so the values need not come from a quantizer.

    python3 worker/weights/testdata/make_quantized_fuzz_seeds.py
"""
import json
import os

import numpy as np
from safetensors.numpy import save_file

OUT, IN = 16, 64
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quantized_fuzz")
rng = np.random.default_rng(5)
P = "model.layers.0.mlp.up_proj"


def nf4(double_quant):
    numel = OUT * IN
    blocks = (numel + 63) // 64
    t = {
        P + ".weight": rng.integers(0, 256, ((numel + 1) // 2, 1), dtype=np.uint8),
        P + ".weight.quant_map": np.linspace(-1, 1, 16, dtype=np.float32),
    }
    state = {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [OUT, IN]}
    if double_quant:
        t[P + ".weight.absmax"] = rng.integers(0, 256, (blocks,), dtype=np.uint8)
        t[P + ".weight.nested_absmax"] = rng.random((1,), dtype=np.float32)
        t[P + ".weight.nested_quant_map"] = np.linspace(-1, 1, 256, dtype=np.float32)
        state.update({"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.25})
    else:
        t[P + ".weight.absmax"] = rng.random((blocks,), dtype=np.float32)
    text = json.dumps(state).encode()
    t[P + ".weight.quant_state.bitsandbytes__nf4"] = np.frombuffer(text, dtype=np.uint8).copy()
    return t


SEEDS = {
    "int8.safetensors": {
        P + ".weight": rng.integers(-127, 128, (OUT, IN), dtype=np.int8),
        P + ".weight_scale": rng.random((OUT, 1), dtype=np.float32),
    },
    "int4.safetensors": {
        P + ".qweight": rng.integers(-2**31, 2**31, (IN, OUT // 8), dtype=np.int32),
        P + ".qzeros": rng.integers(-2**31, 2**31, (1, OUT // 8), dtype=np.int32),
        P + ".scales": rng.random((1, OUT), dtype=np.float32).astype(np.float16),
    },
    "nf4.safetensors": nf4(False),
    "nf4_double_quant.safetensors": nf4(True),
}

os.makedirs(HERE, exist_ok=True)
for name, tensors in SEEDS.items():
    save_file(tensors, os.path.join(HERE, name), metadata={"format": "pt"})
    print(name)
