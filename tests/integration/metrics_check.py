#!/usr/bin/env python3
"""Checks the /metrics of a running gateway and its workers with prometheus_client's parser.

Run by tests/integration/gateway_test.cc (GatewayTest.MetricsParseAndMove):

    metrics_check.py --gateway http://127.0.0.1:PORT --worker http://127.0.0.1:W1 \
        [--worker http://127.0.0.1:W2 ...] --model smol

Scrapes every endpoint through parse_metrics.py (prometheus_client's parser and the format
checks every service gets; see there), checks that the families below are present with their
types, sends one chat completion through the gateway (standard library HTTP, non-streaming),
scrapes again and checks that the counters and histograms moved by what the response reports: one
request with code OK, its prompt and completion tokens, one time-to-first-token observation,
and the same tokens on the workers' side. The workers must be idle otherwise (the test runs
alone). Prints one "ok NAME" line per check; exit status 0 when all passed.
"""

import argparse
import json
import os
import subprocess
import sys
import urllib.request

GATEWAY_FAMILIES = {
    "shardserve_gateway_requests": "counter",
    "shardserve_gateway_time_to_first_token_seconds": "histogram",
    "shardserve_gateway_inter_token_latency_seconds": "histogram",
    "shardserve_gateway_request_duration_seconds": "histogram",
    "shardserve_gateway_queue_time_seconds": "histogram",
    "shardserve_gateway_prompt_tokens": "counter",
    "shardserve_gateway_generation_tokens": "counter",
    "shardserve_gateway_queue_depth": "gauge",
    "shardserve_gateway_in_flight_requests": "gauge",
    "shardserve_gateway_retries": "counter",
    "shardserve_gateway_worker_up": "gauge",
    "shardserve_gateway_worker_failures": "counter",
}
WORKER_FAMILIES = {
    "shardserve_worker_requests": "counter",
    "shardserve_worker_time_to_first_token_seconds": "histogram",
    "shardserve_worker_request_duration_seconds": "histogram",
    "shardserve_worker_queue_duration_seconds": "histogram",
    "shardserve_worker_prompt_tokens": "counter",
    "shardserve_worker_generation_tokens": "counter",
    "shardserve_worker_step_duration_seconds": "histogram",
    "shardserve_worker_step_tokens": "counter",
    "shardserve_worker_running_sequences": "gauge",
    "shardserve_worker_waiting_sequences": "gauge",
    "shardserve_worker_kv_blocks_used": "gauge",
    "shardserve_worker_kv_blocks_total": "gauge",
}


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        check(response.status == 200, f"{url}: HTTP {response.status}")
        return response.read().decode()


class Scrape:
    """One /metrics page, read through parse_metrics.py (beside this file), which checks what
    every service promises (HTTP 200, the text format's Content-Type, prometheus_client's parser
    accepts it, shardserve_ prefixes, non-negative counters, consistent histograms) and returns
    the families; sample values are indexed by (name, labels)."""

    def __init__(self, base_url):
        parser = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parse_metrics.py")
        run = subprocess.run([sys.executable, parser, base_url + "/metrics"], capture_output=True,
                             text=True, timeout=60)
        check(run.returncode == 0, f"parse_metrics.py {base_url}/metrics: {run.stderr.strip()}")
        self.families = json.loads(run.stdout)
        self.samples = {}
        for family in self.families.values():
            for s in family["samples"]:
                self.samples[(s["name"], tuple(sorted(s["labels"].items())))] = s["value"]

    def total(self, name, **labels):
        """Sum of sample `name` over the series whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, l), v in self.samples.items() if n == name and want <= set(l))

    def check_families(self, expected, where):
        for name, kind in expected.items():
            check(name in self.families, f"{where}: no family {name} (has "
                  f"{sorted(self.families)})")
            check(self.families[name]["type"] == kind,
                  f"{where}: {name} is a {self.families[name]['type']}, not a {kind}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--worker", action="append", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    model = args.model
    results = []

    def run(name, fn):
        try:
            fn()
            print(f"ok {name}", flush=True)
            results.append(True)
        except Failure as e:
            print(f"FAIL {name}: {e}", flush=True)
            results.append(False)

    try:
        before_gw = Scrape(args.gateway)
        before_w = [Scrape(w) for w in args.worker]
    except Failure as e:
        print(f"FAIL scrape: {e}", flush=True)
        return 1

    run("gateway_families", lambda: before_gw.check_families(GATEWAY_FAMILIES, "gateway"))
    for i, s in enumerate(before_w):
        run(f"worker{i}_families", lambda s=s, i=i: s.check_families(WORKER_FAMILIES,
                                                                      f"worker {i}"))

    def workers_up():
        ups = [v for (n, l), v in before_gw.samples.items()
               if n == "shardserve_gateway_worker_up" and ("model", model) in l]
        check(ups == [1.0] * len(args.worker),
              f"worker_up for {model}: {ups}, want {len(args.worker)} x 1")
    run("gateway_worker_up", workers_up)

    def worker_gauges():
        for i, s in enumerate(before_w):
            check(s.total("shardserve_worker_kv_blocks_total") > 0, f"worker {i}: no KV blocks")
            check(s.total("shardserve_worker_running_sequences") == 0,
                  f"worker {i}: sequences running while idle")
    run("worker_gauges", worker_gauges)

    body = post(args.gateway + "/v1/chat/completions", {
        "model": model, "messages": [{"role": "user", "content": "Name a fruit."}],
        "max_tokens": 6, "temperature": 0})
    usage = json.loads(body)["usage"]
    try:
        after_gw = Scrape(args.gateway)
        after_w = [Scrape(w) for w in args.worker]
    except Failure as e:
        print(f"FAIL scrape: {e}", flush=True)
        return 1

    def gw_delta(name, **labels):
        return after_gw.total(name, **labels) - before_gw.total(name, **labels)

    def w_delta(name, **labels):
        return sum(a.total(name, **labels) - b.total(name, **labels)
                   for a, b in zip(after_w, before_w))

    def gateway_moved():
        got = gw_delta("shardserve_gateway_requests_total", model=model)
        check(got == 1, f"requests_total moved by {got}, want 1")
        got = gw_delta("shardserve_gateway_requests_total", model=model, code="OK")
        check(got == 1, f"requests_total{{code=OK}} moved by {got}, want 1")
        got = gw_delta("shardserve_gateway_prompt_tokens_total", model=model)
        check(got == usage["prompt_tokens"], f"prompt_tokens_total moved by {got}, "
              f"the response says {usage['prompt_tokens']}")
        got = gw_delta("shardserve_gateway_generation_tokens_total", model=model)
        check(got == usage["completion_tokens"], f"generation_tokens_total moved by {got}, "
              f"the response says {usage['completion_tokens']}")
        for h in ("time_to_first_token_seconds", "request_duration_seconds",
                  "queue_time_seconds"):
            got = gw_delta(f"shardserve_gateway_{h}_count", model=model)
            check(got == 1, f"{h}_count moved by {got}, want 1")
        got = gw_delta("shardserve_gateway_inter_token_latency_seconds_count", model=model)
        check(got >= 1, f"inter_token_latency_seconds_count moved by {got}")
        check(after_gw.total("shardserve_gateway_in_flight_requests") == 0, "in_flight not 0")
        check(after_gw.total("shardserve_gateway_queue_depth", model=model) == 0,
              "queue_depth not 0")
    run("gateway_counters_moved", gateway_moved)

    def workers_moved():
        got = w_delta("shardserve_worker_requests_total")
        check(got == 1, f"worker requests_total moved by {got} over the workers, want 1")
        got = w_delta("shardserve_worker_requests_total", code="OK")
        check(got == 1, f"worker requests_total{{code=OK}} moved by {got}, want 1")
        got = w_delta("shardserve_worker_generation_tokens_total")
        check(got == usage["completion_tokens"], f"worker generation_tokens_total moved by {got}")
        got = w_delta("shardserve_worker_prompt_tokens_total")
        check(got == usage["prompt_tokens"], f"worker prompt_tokens_total moved by {got}")
        got = w_delta("shardserve_worker_time_to_first_token_seconds_count")
        check(got == 1, f"worker time_to_first_token_seconds_count moved by {got}")
        got = w_delta("shardserve_worker_step_duration_seconds_count")
        check(got >= usage["completion_tokens"], f"step_duration_seconds_count moved by {got}")
        got = w_delta("shardserve_worker_step_tokens_total", phase="decode")
        check(got >= usage["completion_tokens"] - 1, f"decode step tokens moved by {got}")
    run("worker_counters_moved", workers_moved)

    print(f"{sum(results)}/{len(results)} checks passed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
