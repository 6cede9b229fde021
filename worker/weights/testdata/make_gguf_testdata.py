#!/usr/bin/env python3
"""Writes the small GGUF test files used by gguf_test, model_weights_test and the GGUF fuzzer.

Files (all written with the `gguf` package's GGUFWriter, so they are what llama.cpp's own
tooling produces):
  worker/weights/testdata/gguf/all_types.gguf
      every metadata value type (scalars, strings, arrays of each, nested arrays), a custom
      alignment of 64, and tensors of several types with simple known values.
  worker/weights/testdata/gguf/tiny_llama.gguf + tiny_llama_hf/{config.json,model.safetensors}
      a 2-layer llama (hidden 32, 4 heads, 2 KV heads, untied lm_head) with random weights.
      The GGUF holds them as llama.cpp's converter writes them: Q and K rows permuted
      (LlamaModel.permute in convert_hf_to_gguf.py) and quantized (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
      F16, BF16, F32). The HF directory holds, in f32 and HF layout, exactly what dequantizing
      the GGUF gives (gguf.quants.dequantize) with the permutation undone by index.
  worker/weights/testdata/gguf/tiny_mixtral.gguf + tiny_mixtral_hf/...
      a 1-layer Mixtral (3 experts, 2 used, tied embeddings) with stacked expert tensors
      (blk.0.ffn_{gate,up,down}_exps) in F16; the HF directory holds the same values (F16/F32).
  tests/fuzz/corpus/gguf/*.gguf
      seeds under 4 KiB: all_types.gguf, a llama metadata set with one tensor of every
      dequantizable GGML type, a tiny Mixtral metadata set, and a complete 1-layer llama.

Run from anywhere: python3 worker/weights/testdata/make_gguf_testdata.py
Needs: numpy, gguf (0.19), safetensors.
"""
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V
from gguf import GGUFWriter, quants
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
OUT = os.path.join(HERE, "gguf")
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus", "gguf")
rng = np.random.default_rng(7)


def write_gguf(path, writer):
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{os.path.relpath(path, ROOT)}: {os.path.getsize(path)} bytes")


def permute(weights, n_head, n_head_kv):
    """llama.cpp convert_hf_to_gguf.py, LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def stored(w, qtype):
    """(array to hand GGUFWriter, raw_dtype, float32 values a reader must get back)."""
    if qtype == T.F32:
        w = w.astype(np.float32)
        return w, None, w
    if qtype == T.F16:
        w = w.astype(np.float16)
        return w, None, w.astype(np.float32)
    q = quants.quantize(w.astype(np.float32), qtype)
    return q, qtype, quants.dequantize(q, qtype).reshape(w.shape)


def all_types():
    path = os.path.join(OUT, "all_types.gguf")
    w = GGUFWriter(path, "test")
    w.add_custom_alignment(64)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 0.1)
    w.add_bool("t.bool", True)
    w.add_string("t.string", "héllo wörld")
    w.add_uint64("t.u64", 18000000000000000000)
    w.add_int64("t.i64", -9000000000000000000)
    w.add_float64("t.f64", 2.718281828459045)
    w.add_key_value("t.arr.u8", [1, 2, 255], V.ARRAY, V.UINT8)
    w.add_key_value("t.arr.i16", [-5, 7], V.ARRAY, V.INT16)
    w.add_key_value("t.arr.u32", [1, 4000000000], V.ARRAY, V.UINT32)
    w.add_key_value("t.arr.i32", [-1, 0, 1], V.ARRAY, V.INT32)
    w.add_key_value("t.arr.u64", [18000000000000000000], V.ARRAY, V.UINT64)
    w.add_key_value("t.arr.f32", [0.5, -1.25], V.ARRAY, V.FLOAT32)
    w.add_key_value("t.arr.f64", [1e300], V.ARRAY, V.FLOAT64)
    w.add_key_value("t.arr.bool", [True, False, True], V.ARRAY, V.BOOL)
    w.add_array("t.arr.string", ["a", "", "ü"])
    w.add_array("t.arr.nested", [[1, 2], [3]])
    w.add_tensor("f32", np.arange(6, dtype=np.float32).reshape(2, 3))
    w.add_tensor("f16", np.array([1.5, -2, 0, 65504], dtype=np.float16))
    w.add_tensor("i32", np.array([7, -8, 9], dtype=np.int32))
    q8 = quants.quantize(np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32), T.Q8_0)
    w.add_tensor("q8_0", q8, raw_dtype=T.Q8_0)
    bf = quants.quantize(np.array([[1.0, -3.0], [0.5, 1e10]], dtype=np.float32), T.BF16)
    w.add_tensor("bf16", bf, raw_dtype=T.BF16)
    w.add_tensor("cube", np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    write_gguf(path, w)
    return path


def add_llama_metadata(w, *, vocab, hidden, ffn, layers, heads, kv_heads, tokens=True):
    w.add_string("general.name", "tiny")
    w.add_uint32("llama.context_length", 128)
    w.add_uint32("llama.embedding_length", hidden)
    w.add_uint32("llama.block_count", layers)
    w.add_uint32("llama.feed_forward_length", ffn)
    w.add_uint32("llama.attention.head_count", heads)
    w.add_uint32("llama.attention.head_count_kv", kv_heads)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_uint32("llama.rope.dimension_count", hidden // heads)
    w.add_uint32("llama.vocab_size", vocab)
    w.add_string("tokenizer.ggml.model", "gpt2")
    if tokens:
        w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(vocab)])
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)


def hf_config(path, **fields):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(fields, f, indent=2)
        f.write("\n")


def tiny_llama():
    vocab, hidden, ffn, layers, heads, kv_heads = 16, 32, 32, 2, 4, 2
    head_dim = hidden // heads
    path = os.path.join(OUT, "tiny_llama.gguf")
    w = GGUFWriter(path, "llama")
    add_llama_metadata(w, vocab=vocab, hidden=hidden, ffn=ffn, layers=layers, heads=heads,
                       kv_heads=kv_heads)
    hf = {}

    def add(gguf_name, hf_name, shape, qtype, n_head=None, n_head_kv=None, scale=0.2):
        weights = (rng.standard_normal(shape) * scale).astype(np.float32)
        if n_head is not None:
            weights = permute(weights, n_head, n_head_kv)
        data, raw_dtype, values = stored(weights, qtype)
        w.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
        if n_head is not None:
            # GGUF row i holds HF row rows[i].
            rows = permute(np.arange(shape[0])[:, None], n_head, n_head_kv)[:, 0]
            unpermuted = np.empty_like(values)
            unpermuted[rows] = values
            values = unpermuted
        hf[hf_name] = np.ascontiguousarray(values, dtype=np.float32)

    add("token_embd.weight", "model.embed_tokens.weight", (vocab, hidden), T.Q8_0)
    types = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.F16, T.BF16]
    for i in range(layers):
        p, h = f"blk.{i}.", f"model.layers.{i}."
        t = types[i:] + types[:i]
        add(p + "attn_norm.weight", h + "input_layernorm.weight", (hidden,), T.F32, scale=1)
        add(p + "attn_q.weight", h + "self_attn.q_proj.weight", (heads * head_dim, hidden), t[0],
            heads, heads)
        add(p + "attn_k.weight", h + "self_attn.k_proj.weight", (kv_heads * head_dim, hidden),
            t[1], heads, kv_heads)
        add(p + "attn_v.weight", h + "self_attn.v_proj.weight", (kv_heads * head_dim, hidden), t[2])
        add(p + "attn_output.weight", h + "self_attn.o_proj.weight", (hidden, heads * head_dim),
            t[3])
        add(p + "ffn_norm.weight", h + "post_attention_layernorm.weight", (hidden,), T.F32, scale=1)
        add(p + "ffn_gate.weight", h + "mlp.gate_proj.weight", (ffn, hidden), t[4])
        add(p + "ffn_up.weight", h + "mlp.up_proj.weight", (ffn, hidden), t[5])
        add(p + "ffn_down.weight", h + "mlp.down_proj.weight", (hidden, ffn), t[6])
    add("output_norm.weight", "model.norm.weight", (hidden,), T.F32, scale=1)
    add("output.weight", "lm_head.weight", (vocab, hidden), T.Q8_0)
    write_gguf(path, w)

    hf_dir = os.path.join(OUT, "tiny_llama_hf")
    hf_config(hf_dir, architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=vocab,
              hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv_heads,
              max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
              tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, torch_dtype="float32")
    save_file(hf, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})


def tiny_mixtral():
    vocab, hidden, ffn, heads, kv_heads, experts = 16, 32, 16, 2, 1, 3
    head_dim = hidden // heads
    path = os.path.join(OUT, "tiny_mixtral.gguf")
    w = GGUFWriter(path, "llama")
    add_llama_metadata(w, vocab=vocab, hidden=hidden, ffn=ffn, layers=1, heads=heads,
                       kv_heads=kv_heads, tokens=False)
    w.add_uint32("llama.expert_count", experts)
    w.add_uint32("llama.expert_used_count", 2)
    hf = {}

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float16)

    emb = rand(vocab, hidden)
    w.add_tensor("token_embd.weight", emb)
    hf["model.embed_tokens.weight"] = emb
    norm = (1 + rng.standard_normal(hidden) * 0.1).astype(np.float32)
    w.add_tensor("blk.0.attn_norm.weight", norm)
    hf["model.layers.0.input_layernorm.weight"] = norm
    w.add_tensor("blk.0.ffn_norm.weight", norm * 2)
    hf["model.layers.0.post_attention_layernorm.weight"] = norm * 2
    w.add_tensor("output_norm.weight", norm * 3)
    hf["model.norm.weight"] = norm * 3
    for name, hf_name, rows, n_kv in (("attn_q", "q_proj", heads * head_dim, heads),
                                      ("attn_k", "k_proj", kv_heads * head_dim, kv_heads),
                                      ("attn_v", "v_proj", kv_heads * head_dim, None),
                                      ("attn_output", "o_proj", hidden, None)):
        x = rand(rows, hidden)
        hf[f"model.layers.0.self_attn.{hf_name}.weight"] = x
        w.add_tensor(f"blk.0.{name}.weight", permute(x, heads, n_kv) if n_kv else x)
    router = rng.standard_normal((experts, hidden)).astype(np.float32)
    w.add_tensor("blk.0.ffn_gate_inp.weight", router)
    hf["model.layers.0.block_sparse_moe.gate.weight"] = router
    gate, up, down = rand(experts, ffn, hidden), rand(experts, ffn, hidden), rand(experts, hidden, ffn)
    w.add_tensor("blk.0.ffn_gate_exps.weight", gate)
    w.add_tensor("blk.0.ffn_down_exps.weight", down)
    w.add_tensor("blk.0.ffn_up_exps.weight", up)
    for e in range(experts):
        p = f"model.layers.0.block_sparse_moe.experts.{e}."
        hf[p + "w1.weight"], hf[p + "w2.weight"], hf[p + "w3.weight"] = gate[e], down[e], up[e]
    write_gguf(path, w)

    hf_dir = os.path.join(OUT, "tiny_mixtral_hf")
    hf_config(hf_dir, architectures=["MixtralForCausalLM"], model_type="mixtral", vocab_size=vocab,
              hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=1,
              num_attention_heads=heads, num_key_value_heads=kv_heads,
              max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
              num_local_experts=experts, num_experts_per_tok=2, tie_word_embeddings=True,
              bos_token_id=1, eos_token_id=2, torch_dtype="float16")
    save_file({k: np.ascontiguousarray(v) for k, v in hf.items()},
              os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})


def seeds():
    # Llama metadata plus one tensor of every dequantizable type.
    path = os.path.join(CORPUS, "llama_all_tensor_types.gguf")
    w = GGUFWriter(path, "llama")
    add_llama_metadata(w, vocab=8, hidden=32, ffn=32, layers=1, heads=2, kv_heads=1)
    w.add_tensor("token_embd.weight", quants.quantize(
        rng.standard_normal((8, 32)).astype(np.float32), T.Q8_0), raw_dtype=T.Q8_0)
    w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    w.add_tensor("f16", rng.standard_normal(8).astype(np.float16))
    for qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1):
        w.add_tensor(qtype.name.lower(), quants.quantize(
            rng.standard_normal(32).astype(np.float32), qtype), raw_dtype=qtype)
    for qtype in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
        size = quants.GGML_QUANT_SIZES[qtype][1]
        raw = rng.integers(0, 256, size=size, dtype=np.uint8)
        w.add_tensor(qtype.name.lower(), raw, raw_dtype=qtype)
    write_gguf(path, w)

    path = os.path.join(CORPUS, "mixtral_meta.gguf")
    w = GGUFWriter(path, "llama")
    add_llama_metadata(w, vocab=4, hidden=32, ffn=32, layers=1, heads=2, kv_heads=2, tokens=False)
    w.add_uint32("llama.expert_count", 2)
    w.add_uint32("llama.expert_used_count", 1)
    w.add_string("llama.rope.scaling.type", "linear")
    w.add_float32("llama.rope.scaling.factor", 2.0)
    w.add_tensor("blk.0.ffn_gate_exps.weight", rng.standard_normal((2, 1, 32)).astype(np.float16))
    write_gguf(path, w)

    # A complete (valid) model, so that mutations reach ModelWeights' validation and mapping.
    path = os.path.join(CORPUS, "llama_complete_tiny.gguf")
    w = GGUFWriter(path, "llama")
    hidden, ffn, heads, kv_heads, vocab = 8, 8, 2, 1, 4
    add_llama_metadata(w, vocab=vocab, hidden=hidden, ffn=ffn, layers=1, heads=heads,
                       kv_heads=kv_heads, tokens=False)
    hd = hidden // heads
    for name, shape in (("token_embd", (vocab, hidden)), ("output_norm", (hidden,)),
                        ("blk.0.attn_norm", (hidden,)), ("blk.0.ffn_norm", (hidden,)),
                        ("blk.0.attn_q", (heads * hd, hidden)),
                        ("blk.0.attn_k", (kv_heads * hd, hidden)),
                        ("blk.0.attn_v", (kv_heads * hd, hidden)),
                        ("blk.0.attn_output", (hidden, heads * hd)),
                        ("blk.0.ffn_gate", (ffn, hidden)), ("blk.0.ffn_up", (ffn, hidden)),
                        ("blk.0.ffn_down", (hidden, ffn))):
        w.add_tensor(name + ".weight", rng.standard_normal(shape).astype(np.float32))
    write_gguf(path, w)

    with open(os.path.join(OUT, "all_types.gguf"), "rb") as src:
        data = src.read()
    with open(os.path.join(CORPUS, "all_types.gguf"), "wb") as dst:
        dst.write(data)
    for name in os.listdir(CORPUS):
        assert os.path.getsize(os.path.join(CORPUS, name)) < 4096, name


def main():
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(CORPUS, exist_ok=True)
    all_types()
    tiny_llama()
    tiny_mixtral()
    seeds()


if __name__ == "__main__":
    main()
