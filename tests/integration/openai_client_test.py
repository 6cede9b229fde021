#!/usr/bin/env python3
"""The official `openai` Python client against a running gateway's OpenAI-compatible API.

Run by tests/integration/gateway_test.cc (GatewayTest.OpenAiClientPassesEveryCase) with the
addresses of a running cluster:

    openai_client_test.py --base-url http://127.0.0.1:PORT/v1 --model smol \
        [--keyed-base-url http://127.0.0.1:PORT2/v1 --key KEY]

`--base-url` is a gateway without API keys; `--keyed-base-url` one that requires `--key` (the
bad-key case runs only when it is given). Every case prints "ok NAME" or "FAIL NAME: why"; the
exit status is 0 when every case passed. The client never retries (max_retries=0), so each
error is the gateway's own answer.
"""

import argparse
import sys
import traceback

import openai

# A prompt that makes the model write more than any max_tokens used here.
TALK = "Write a long story about a dragon who learns to paint. Describe every color."


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


class Cases:
    def __init__(self, args):
        self.model = args.model
        self.client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0,
                                    timeout=120)
        self.keyed_base_url = args.keyed_base_url
        self.key = args.key

    def chat(self, content, **kwargs):
        return self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": content}], **kwargs)

    def stream_text(self, content, **kwargs):
        """(text, finish_reason, chunks) of a streamed chat completion."""
        text, finish, chunks = "", None, []
        for chunk in self.chat(content, stream=True, **kwargs):
            chunks.append(chunk)
            for choice in chunk.choices:
                if choice.delta.content:
                    text += choice.delta.content
                if choice.finish_reason:
                    finish = choice.finish_reason
        return text, finish, chunks

    # --- cases --------------------------------------------------------------------------------

    def models(self):
        models = self.client.models.list()
        ids = [m.id for m in models.data]
        check(self.model in ids, f"/v1/models lists {ids}, not {self.model!r}")
        one = self.client.models.retrieve(self.model)
        check(one.id == self.model, f"/v1/models/{self.model} returned {one.id!r}")

    def chat_non_streaming(self):
        r = self.chat("What is the capital of France?", max_tokens=16, temperature=0)
        check(r.object == "chat.completion", f"object {r.object!r}")
        check(r.model == self.model, f"model {r.model!r}")
        check(len(r.choices) == 1, f"{len(r.choices)} choices")
        choice = r.choices[0]
        check(choice.message.role == "assistant", f"role {choice.message.role!r}")
        check(choice.message.content, "empty content")
        check(choice.finish_reason in ("stop", "length"), f"finish_reason {choice.finish_reason!r}")
        check(r.usage.prompt_tokens > 0, f"prompt_tokens {r.usage.prompt_tokens}")
        check(0 < r.usage.completion_tokens <= 16,
              f"completion_tokens {r.usage.completion_tokens}")
        check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens,
              "total_tokens is not prompt + completion")

    def chat_streaming(self):
        # Greedy: the stream's deltas add up to the non-streamed answer.
        whole = self.chat("Name three animals.", max_tokens=16, temperature=0)
        text, finish, chunks = self.stream_text("Name three animals.", max_tokens=16,
                                                temperature=0)
        check(len(chunks) > 2, f"only {len(chunks)} chunks")
        check(all(c.object == "chat.completion.chunk" for c in chunks), "chunk object")
        check(len({c.id for c in chunks}) == 1, "chunks of one stream carry different ids")
        check(text == whole.choices[0].message.content,
              f"streamed {text!r} != non-streamed {whole.choices[0].message.content!r}")
        check(finish == whole.choices[0].finish_reason, f"finish_reason {finish!r}")

    def include_usage(self):
        text, _, chunks = self.stream_text("Say hello.", max_tokens=8, temperature=0,
                                           stream_options={"include_usage": True})
        last = chunks[-1]
        check(last.usage is not None, "the last chunk carries no usage")
        check(last.choices == [], f"the usage chunk has choices {last.choices}")
        check(0 < last.usage.completion_tokens <= 8,
              f"completion_tokens {last.usage.completion_tokens}")
        check(last.usage.prompt_tokens > 0, "prompt_tokens")
        check(all(c.usage is None for c in chunks[:-1]), "usage before the last chunk")
        _, _, plain = self.stream_text("Say hello.", max_tokens=8, temperature=0)
        check(all(c.usage is None for c in plain), "usage without include_usage")

    def stop(self):
        # The greedy answer without a stop string, then with a word from its middle as the stop:
        # the answer ends just before that word.
        full = self.chat(TALK, max_tokens=24, temperature=0).choices[0].message.content
        words = full.split()
        check(len(words) >= 6, f"answer too short to pick a stop word: {full!r}")
        stop = " " + words[len(words) // 2]
        cut = full.find(stop)
        check(cut > 0, f"{stop!r} not in {full!r}")
        r = self.chat(TALK, max_tokens=24, temperature=0, stop=[stop, "@@never@@"])
        check(r.choices[0].message.content == full[:cut],
              f"with stop {stop!r}: {r.choices[0].message.content!r}, want {full[:cut]!r}")
        check(r.choices[0].finish_reason == "stop", f"finish_reason {r.choices[0].finish_reason}")
        text, finish, _ = self.stream_text(TALK, max_tokens=24, temperature=0, stop=stop)
        check(text == full[:cut] and finish == "stop", f"streamed with stop: {text!r} {finish}")

    def max_tokens(self):
        r = self.chat(TALK, max_tokens=5, temperature=0)
        check(r.choices[0].finish_reason == "length", f"finish_reason {r.choices[0].finish_reason}")
        check(r.usage.completion_tokens == 5, f"completion_tokens {r.usage.completion_tokens}")
        r = self.chat(TALK, max_completion_tokens=3, temperature=0)
        check(r.choices[0].finish_reason == "length", "max_completion_tokens: finish_reason")
        check(r.usage.completion_tokens == 3,
              f"max_completion_tokens: completion_tokens {r.usage.completion_tokens}")

    def seed_reproducible(self):
        def sample(seed):
            return self.chat(TALK, max_tokens=16, temperature=1.0, seed=seed).choices[0] \
                .message.content
        a, b = sample(1234), sample(1234)
        check(a == b, f"seed 1234 twice: {a!r} != {b!r}")
        others = [sample(s) for s in (1, 2, 3)]
        check(any(o != a for o in others), "four seeds at temperature 1 gave one text")
        g1 = self.chat(TALK, max_tokens=16, temperature=0).choices[0].message.content
        g2 = self.chat(TALK, max_tokens=16, temperature=0).choices[0].message.content
        check(g1 == g2, f"greedy twice: {g1!r} != {g2!r}")

    def n_choices(self):
        r = self.chat(TALK, max_tokens=6, temperature=1.0, seed=7, n=2)
        indexes = sorted(c.index for c in r.choices)
        check(indexes == [0, 1], f"choice indexes {indexes}")
        check(all(c.message.content for c in r.choices), "an empty choice")
        check(r.usage.completion_tokens == 12, f"completion_tokens {r.usage.completion_tokens}")

    def logprobs(self):
        r = self.chat("Say yes.", max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
        content = r.choices[0].logprobs.content
        check(len(content) == r.usage.completion_tokens,
              f"{len(content)} logprobs for {r.usage.completion_tokens} tokens")
        for position in content:
            check(position.logprob <= 0, f"logprob {position.logprob}")
            check(len(position.top_logprobs) == 2, f"{len(position.top_logprobs)} top_logprobs")
            # Greedy: the sampled token is the most likely one.
            check(position.top_logprobs[0].logprob <= position.logprob + 1e-4,
                  "greedy token is not the most likely")

    def unknown_model(self):
        try:
            self.client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        except openai.NotFoundError as e:
            check("no-such-model" in str(e), f"message does not name the model: {e}")
            return
        raise Failure("no NotFoundError")

    def bad_request(self):
        try:
            self.chat("hi", max_tokens=2, temperature=-1)
        except openai.BadRequestError as e:
            check("temperature" in str(e), f"message does not name temperature: {e}")
            return
        raise Failure("no BadRequestError for temperature -1")

    def completions(self):
        r = self.client.completions.create(model=self.model, prompt="The capital of France is",
                                           max_tokens=8, temperature=0)
        check(r.object == "text_completion", f"object {r.object!r}")
        check(r.choices[0].text, "empty text")
        check(r.choices[0].finish_reason in ("stop", "length"), "finish_reason")
        check(0 < r.usage.completion_tokens <= 8, f"completion_tokens {r.usage.completion_tokens}")
        streamed = "".join(c.choices[0].text for c in self.client.completions.create(
            model=self.model, prompt="The capital of France is", max_tokens=8, temperature=0,
            stream=True) if c.choices)
        check(streamed == r.choices[0].text, f"streamed {streamed!r} != {r.choices[0].text!r}")

    def bad_key(self):
        if not self.keyed_base_url:
            raise Failure("no --keyed-base-url given")
        wrong = openai.OpenAI(base_url=self.keyed_base_url, api_key="wrong-key", max_retries=0)
        for call in (lambda: wrong.chat.completions.create(
                         model=self.model, messages=[{"role": "user", "content": "hi"}],
                         max_tokens=2),
                     lambda: wrong.models.list()):
            try:
                call()
            except openai.AuthenticationError:
                continue
            raise Failure("no AuthenticationError with a wrong key")
        right = openai.OpenAI(base_url=self.keyed_base_url, api_key=self.key, max_retries=0)
        r = right.chat.completions.create(model=self.model,
                                          messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2, temperature=0)
        check(r.choices[0].message.content is not None, "the right key got no answer")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--keyed-base-url", default="")
    parser.add_argument("--key", default="")
    parser.add_argument("cases", nargs="*", help="run only these cases")
    args = parser.parse_args()
    cases = Cases(args)
    names = args.cases or [
        "models", "chat_non_streaming", "chat_streaming", "include_usage", "stop", "max_tokens",
        "seed_reproducible", "n_choices", "logprobs", "unknown_model", "bad_request",
        "completions", "bad_key"]
    failed = 0
    for name in names:
        try:
            getattr(cases, name)()
            print(f"ok {name}", flush=True)
        except Failure as e:
            failed += 1
            print(f"FAIL {name}: {e}", flush=True)
        except Exception as e:  # an unexpected error from the client: the case failed
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
    print(f"{len(names) - failed}/{len(names)} cases passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
