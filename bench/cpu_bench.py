#!/usr/bin/env python3
"""shardserve's CPU engine against llama.cpp on the same GGUF, threads and prompt tokens.

Runs bench/engine_bench (ModelRunner, the worker's engine) and then llama.cpp through
llama-cpp-python (scripts/setup-reference.sh installs it) in this one invocation, each with one
warm-up run and then --runs measured runs (the three interleaved, round by round, so that
changing machine load affects each alike), and prints the medians:

  prefill tok/s   a --prompt-tokens prompt (default 512) in one batch, last-token logits only
  decode tok/s    --decode-tokens (default 128) greedy tokens at batch 1, one decode call each

llama.cpp runs in two contexts: flash attention off (the attention the engine implements: K/V cache f16,
softmax over the whole row; the setting of the fidelity goldens) and on. Both sides time the
same work from Python's / C++'s view: the decode call, copying the logits row out, and the argmax.

The roofline lines: bytes a decode step must read (all weights once, the tied embedding being the
LM head, plus the KV cache at the mean context) against the streaming-read bandwidth engine_bench
measures, i.e. the decode rate memory alone would allow.

Usage: python3 bench/cpu_bench.py [--engine-bench build/bench/engine_bench] [--threads 2]
                                  [--runs 5] [--json]
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_MODEL = os.path.join(REPO, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def prompt_tokens(n):
    """The first n ids of the fidelity fixture's long_context prompt (chat-templated English text),
    repeated if shorter: the tokens engine_bench uses by default."""
    goldens = json.load(open(os.path.join(REPO, "tests", "fixtures", "fidelity", "goldens.json"),
                             encoding="utf-8"))
    ids = next(p["prompt_ids"] for p in goldens["prompts"] if p["name"] == "long_context")
    return [ids[i % len(ids)] for i in range(n)]


def find_engine_bench():
    for pattern in ("build/bench/engine_bench", "build*/bench/engine_bench"):
        found = sorted(glob.glob(os.path.join(REPO, pattern)), key=os.path.getmtime, reverse=True)
        if found:
            return found[0]
    return None


def run_engine(args, tokens_file, runs, bandwidth):
    cmd = [args.engine_bench, "--model", args.model, "--threads", str(args.threads),
           "--tokens-file", tokens_file, "--prompt-tokens", str(args.prompt_tokens),
           "--decode-tokens", str(args.decode_tokens), "--runs", str(runs),
           "--activations", args.activations]
    if not bandwidth:
        cmd.append("--no-bandwidth")
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


class LlamaCpp:
    """One llama.cpp context; run_once() times a prefill and a greedy decode like engine_bench."""

    def __init__(self, args, tokens, flash_attn):
        import llama_cpp as lc
        self.lc, self.args, self.tokens, self.flash_attn = lc, args, tokens, flash_attn
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(args.model.encode(),
                                                   lc.llama_model_default_params())
        if not self.model:
            sys.exit(f"llama.cpp could not load {args.model}")
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = args.prompt_tokens + args.decode_tokens
        cparams.n_batch = cparams.n_ubatch = args.prompt_tokens
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = args.threads
        cparams.flash_attn_type = (lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                   else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cparams.type_k = cparams.type_v = lc.GGML_TYPE_F16
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            sys.exit("llama.cpp could not create a context")
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.batch = lc.llama_batch_init(args.prompt_tokens, 0, 1)
        self.prefill, self.decode_rates = [], []
        self.info = {"engine": "llama.cpp", "llama_cpp_python": lc.__version__,
                     "system_info": lc.llama_print_system_info().decode().strip(),
                     "flash_attn": flash_attn}

    def _decode(self, ids, start):
        lc, b = self.lc, self.batch
        for i, t in enumerate(ids):
            b.token[i] = t
            b.pos[i] = start + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = i == len(ids) - 1
        b.n_tokens = len(ids)
        if lc.llama_decode(self.ctx, b) != 0:
            sys.exit("llama_decode failed")
        row = np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ctx, len(ids) - 1),
                                    shape=(self.n_vocab,))
        return int(np.argmax(row))

    def run_once(self, record=True):
        lc, args = self.lc, self.args
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        t0 = time.perf_counter()
        token = self._decode(self.tokens, 0)
        t1 = time.perf_counter()
        for i in range(args.decode_tokens):
            token = self._decode([token], args.prompt_tokens + i)
        t2 = time.perf_counter()
        if record:
            self.prefill.append(args.prompt_tokens / (t1 - t0))
            self.decode_rates.append(args.decode_tokens / (t2 - t1))

    def result(self):
        return self.info | {
            "prefill_tok_s": statistics.median(self.prefill),
            "decode_tok_s": statistics.median(self.decode_rates),
            "prefill_tok_s_runs": self.prefill, "decode_tok_s_runs": self.decode_rates}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine-bench", default=find_engine_bench())
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--activations", choices=["q8", "f32"], default="q8")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    args = parser.parse_args()
    if not args.engine_bench or not os.path.exists(args.engine_bench):
        sys.exit("engine_bench not found: build it (cmake --build build --target engine_bench) "
                 "or pass --engine-bench")

    tokens = prompt_tokens(args.prompt_tokens)
    llama_off = LlamaCpp(args, tokens, flash_attn=False)
    llama_on = LlamaCpp(args, tokens, flash_attn=True)
    llama_off.run_once(record=False)  # warm-up
    llama_on.run_once(record=False)
    load_before = os.getloadavg()[0]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(tokens, f)
        tokens_file = f.name
    try:
        # Rounds interleave the three so that a change in machine load hits all of them alike;
        # each engine_bench call does its own warm-up run.
        engine_runs = []
        for _ in range(args.runs):
            engine_runs.append(run_engine(args, tokens_file, 1, bandwidth=False))
            llama_off.run_once()
            llama_on.run_once()
        ours = run_engine(args, tokens_file, 1, bandwidth=True)  # bandwidth and byte counts
    finally:
        os.unlink(tokens_file)
    load_after = os.getloadavg()[0]
    ours["prefill_tok_s_runs"] = [r["prefill_tok_s"] for r in engine_runs]
    ours["decode_tok_s_runs"] = [r["decode_tok_s"] for r in engine_runs]
    ours["prefill_tok_s"] = statistics.median(ours["prefill_tok_s_runs"])
    ours["decode_tok_s"] = statistics.median(ours["decode_tok_s_runs"])
    llama_off, llama_on = llama_off.result(), llama_on.result()

    print(f"model {os.path.basename(args.model)}, {args.threads} threads, "
          f"prompt {args.prompt_tokens} tokens, decode {args.decode_tokens} tokens at batch 1, "
          f"median of {args.runs} interleaved runs (after warm-up); load average "
          f"{load_before:.1f} before, {load_after:.1f} after on {os.cpu_count()} CPUs")
    print(f"shardserve: {ours['backend']}, activations {ours['activations']}")
    print(f"llama.cpp: llama-cpp-python {llama_off['llama_cpp_python']}, "
          f"{llama_off['system_info']}")
    print()
    print(f"| {'engine':<36} | {'prefill tok/s':>13} | {'decode tok/s':>12} |")
    print(f"|{'-' * 38}|{'-' * 15}|{'-' * 14}|")
    rows = [("shardserve", ours), ("llama.cpp, flash attn off", llama_off),
            ("llama.cpp, flash attn on", llama_on)]
    for name, r in rows:
        print(f"| {name:<36} | {r['prefill_tok_s']:13.1f} | {r['decode_tok_s']:12.1f} |")
    for name, r in rows[1:]:
        label = f"ratio shardserve / {name.split(', ')[1]}"
        print(f"| {label:<36} | {ours['prefill_tok_s'] / r['prefill_tok_s']:12.2f}x "
              f"| {ours['decode_tok_s'] / r['decode_tok_s']:11.2f}x |")

    weights = ours["weight_bytes_per_token"]
    kv = ours["kv_bytes_per_token_at_mean_context"]
    print()
    print(f"decode reads per token: weights {weights / 1e6:.1f} MB + KV cache "
          f"{kv / 1e6:.1f} MB (at the mean context) = {(weights + kv) / 1e6:.1f} MB")
    for key, label in (("read_bandwidth_gb_s_model_size", "a model-sized buffer"),
                       ("read_bandwidth_gb_s_1gib", "a 1 GiB buffer")):
        if key in ours:
            bw = ours[key]
            print(f"streaming read, {args.threads} threads, {label}: {bw:.1f} GB/s -> "
                  f"memory-bound decode ceiling {bw * 1e9 / (weights + kv):.0f} tok/s")
    if args.json:
        print(json.dumps({"shardserve": ours, "llama_cpp_fa_off": llama_off,
                          "llama_cpp_fa_on": llama_on}, indent=1))


if __name__ == "__main__":
    main()
