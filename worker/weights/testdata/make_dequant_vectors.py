#!/usr/bin/env python3
"""Writes the dequantization test vectors used by worker/weights/dequantize_test.cc.

For every type, `dequant/<TYPE>.bin` holds the stored bytes and `dequant/<TYPE>.f32` the float32
values (little-endian) that the reference produces from them:
  - Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: gguf.quants.quantize of random normal data (the converter's
    path), followed by blocks of random bytes with a random finite f16 scale; expected values from
    gguf.quants.dequantize.
  - Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: random super-blocks (gguf.quants cannot quantize them) with
    random finite f16 scales; expected values from gguf.quants.dequantize.
  - F16: every bit pattern whose exponent is 0 or 31 plus random ones; numpy's conversion.
  - BF16_ROUND: float32 inputs (random, ties, NaN, inf, subnormal) in `.bin` and the bf16 bit
    patterns of gguf.quants.quantize(..., BF16) in `.bf16`.
  - F8_E4M3, F8_E5M2: all 256 bytes; ml_dtypes' float8_e4m3fn / float8_e5m2 conversions.

Run from anywhere: python3 worker/weights/testdata/make_dequant_vectors.py
Needs: numpy, gguf (0.19), ml_dtypes.
"""
import os

import ml_dtypes
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGML_QUANT_SIZES
from gguf import quants

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dequant")
rng = np.random.default_rng(20240601)


def write(name, raw, expected):
    with open(os.path.join(OUT, name + ".bin"), "wb") as f:
        f.write(np.ascontiguousarray(raw).tobytes())
    with open(os.path.join(OUT, name + ".f32"), "wb") as f:
        f.write(np.ascontiguousarray(expected, dtype="<f4").tobytes())


def random_f16_scales(n):
    return (rng.standard_normal(n) * 0.05).astype(np.float16).view(np.uint8).reshape(n, 2)


def random_blocks(qtype, n_blocks, scale_offsets):
    _, type_size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in scale_offsets:
        blocks[:, off:off + 2] = random_f16_scales(n_blocks)
    return blocks


def main():
    os.makedirs(OUT, exist_ok=True)
    # 32-value block types: scale offsets of d (and m) inside the block.
    small = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0]}
    for qtype, offsets in small.items():
        data = (rng.standard_normal((4, 64)) * 0.1).astype(np.float32)
        data[0, :32] = 0.0  # an all-zero block (d == 0)
        q = quants.quantize(data, qtype).reshape(-1)
        raw = np.concatenate([q, random_blocks(qtype, 8, offsets).reshape(-1)])
        write(qtype.name, raw, quants.dequantize(raw, qtype))
    # K-quants: d (and dmin) offsets inside the 256-value super-block.
    kquants = {T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
    for qtype, offsets in kquants.items():
        raw = random_blocks(qtype, 4, offsets).reshape(-1)
        write(qtype.name, raw, quants.dequantize(raw, qtype))

    # F16: special exponents exhaustively (zero, subnormal, smallest normal, largest, inf/NaN).
    bits = np.arange(1 << 16, dtype=np.uint32)
    exp = (bits >> 10) & 0x1F
    chosen = bits[np.isin(exp, [0, 31])]
    chosen = np.concatenate([chosen, rng.integers(0, 1 << 16, size=512)]).astype(np.uint16)
    write("F16", chosen, quants.dequantize(chosen.view(np.uint8), T.F16))

    # BF16 rounding (float32 -> bf16), the path safetensors bf16 checkpoints are written with.
    f = rng.integers(0, 1 << 32, size=2048, dtype=np.uint64).astype(np.uint32)
    ties = (rng.integers(0, 1 << 16, size=256, dtype=np.uint64).astype(np.uint32) << 16) | 0x8000
    special = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001,
                        0xFFFFFFFF, 0x7F7FFFFF, 0x7F7F8000, 0x00000001, 0x0000FFFF,
                        0x3F808000, 0x3F818000], dtype=np.uint32)
    f = np.concatenate([f, ties, special]).astype(np.uint32)
    bf = quants.quantize(f.view(np.float32), T.BF16).view(np.uint16)
    with open(os.path.join(OUT, "BF16_ROUND.bin"), "wb") as out:
        out.write(f.astype("<u4").tobytes())
    with open(os.path.join(OUT, "BF16_ROUND.bf16"), "wb") as out:
        out.write(bf.astype("<u2").tobytes())

    # FP8: all 256 encodings.
    all_bytes = np.arange(256, dtype=np.uint8)
    write("F8_E4M3", all_bytes, all_bytes.view(ml_dtypes.float8_e4m3fn).astype(np.float32))
    write("F8_E5M2", all_bytes, all_bytes.view(ml_dtypes.float8_e5m2).astype(np.float32))


if __name__ == "__main__":
    main()
