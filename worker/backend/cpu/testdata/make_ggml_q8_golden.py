#!/usr/bin/env python3
"""Writes ggml_q8_golden.bin: llama.cpp's own x86 CPU results for ActivationMode::kQ8.

Calls ggml-cpu (the libggml-cpu.so that llama-cpp-python ships, built for this machine) through
ctypes: quantize_row_q8_0 / quantize_row_q8_1 on random activations and
ggml_vec_dot_{q4_0_q8_0, q4_1_q8_1, q8_0_q8_0} on random weight rows. cpu_backend_test checks
that every kernel table reproduces the quantized blocks and the dot products bit for bit.

Usage: python3 make_ggml_q8_golden.py [OUT]   (needs `pip install llama-cpp-python numpy`)

Format (little endian): b"GGQ8" u32 version=1 u32 cases; per case: u32 ggml_type (2 Q4_0,
3 Q4_1, 8 Q8_0), u32 rows, u32 cols, u32 n, weight bytes (rows * row bytes), f32 x[n][cols],
activation blocks as ggml stores them (n * cols/32 * {34 (q8_0) | 36 (q8_1)} bytes),
f32 y[n][rows].
"""
import ctypes
import os
import struct
import sys

import numpy as np
import llama_cpp

LIB = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
ctypes.CDLL(os.path.join(LIB, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
cpu = ctypes.CDLL(os.path.join(LIB, "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
cpu.ggml_cpu_init.restype = None
cpu.ggml_cpu_init()

VP, FP = ctypes.c_void_p, ctypes.POINTER(ctypes.c_float)
for name in ("quantize_row_q8_0", "quantize_row_q8_1"):
    getattr(cpu, name).argtypes = [VP, VP, ctypes.c_int64]
    getattr(cpu, name).restype = None
for name in ("ggml_vec_dot_q4_0_q8_0", "ggml_vec_dot_q4_1_q8_1", "ggml_vec_dot_q8_0_q8_0"):
    f = getattr(cpu, name)
    f.argtypes = [ctypes.c_int, FP, ctypes.c_size_t, VP, ctypes.c_size_t, VP, ctypes.c_size_t,
                  ctypes.c_int]
    f.restype = None

# type id -> (block bytes, activation block bytes, quantize fn, dot fn)
TYPES = {
    2: (18, 34, cpu.quantize_row_q8_0, cpu.ggml_vec_dot_q4_0_q8_0),
    3: (20, 36, cpu.quantize_row_q8_1, cpu.ggml_vec_dot_q4_1_q8_1),
    8: (34, 34, cpu.quantize_row_q8_0, cpu.ggml_vec_dot_q8_0_q8_0),
}


def f16_bytes(values):
    return np.asarray(values, dtype=np.float16).tobytes()


def random_weights(rng, ggml_type, rows, nb):
    out = bytearray()
    for _ in range(rows * nb):
        out += f16_bytes([rng.uniform(0.002, 0.05) * rng.choice([1, -1])])
        if ggml_type == 3:
            out += f16_bytes([rng.uniform(-0.2, 0.2)])
        if ggml_type == 8:
            out += rng.integers(-127, 128, 32, dtype=np.int8).tobytes()
        else:
            out += rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    return bytes(out)


def random_activations(rng, n, cols):
    x = rng.standard_normal((n, cols)).astype(np.float32)
    x *= rng.uniform(0.01, 30.0, (n, 1)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block (d = 0, id = 0)
    if cols >= 64:  # exact halves after scaling: amax 127 makes id = 1, so x * id = x
        x[0, 32:64] = (np.arange(32, dtype=np.float32) - 15.5)
        x[0, 40] = 127.0
    if n > 1 and cols >= 96:  # tiny and huge magnitudes (fp16 subnormal / large scales)
        x[1, 64:96] *= np.float32(1e-6)
        x[1, 0:32] *= np.float32(1e3)
    return x


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "ggml_q8_golden.bin")
    rng = np.random.default_rng(20240611)
    cases = []
    for ggml_type in (2, 3, 8):
        for rows, cols, n in ((7, 224, 3), (5, 576, 2), (3, 32, 1)):
            bb, ab, quantize, dot = TYPES[ggml_type]
            nb = cols // 32
            w = random_weights(rng, ggml_type, rows, nb)
            x = random_activations(rng, n, cols)
            xq = bytearray()
            y = np.zeros((n, rows), dtype=np.float32)
            for t in range(n):
                buf = ctypes.create_string_buffer(nb * ab)
                row = np.ascontiguousarray(x[t])
                quantize(row.ctypes.data, buf, cols)
                xq += buf.raw
                for r in range(rows):
                    wrow = ctypes.create_string_buffer(w[r * nb * bb:(r + 1) * nb * bb], nb * bb)
                    s = ctypes.c_float()
                    dot(cols, ctypes.byref(s), 0, wrow, 0, buf, 0, 1)
                    y[t, r] = s.value
            cases.append((ggml_type, rows, cols, n, w, x, bytes(xq), y))
    with open(out_path, "wb") as f:
        f.write(b"GGQ8" + struct.pack("<II", 1, len(cases)))
        for ggml_type, rows, cols, n, w, x, xq, y in cases:
            f.write(struct.pack("<IIII", ggml_type, rows, cols, n))
            f.write(w)
            f.write(x.astype("<f4").tobytes())
            f.write(xq)
            f.write(y.astype("<f4").tobytes())
    print(f"wrote {len(cases)} cases to {out_path}")


if __name__ == "__main__":
    main()
