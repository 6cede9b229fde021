#!/usr/bin/env python3
"""Fetches a service's /metrics and parses it with prometheus_client's own parser.

    parse_metrics.py URL

Checks what every shardserve service promises about /metrics: HTTP 200, Content-Type
`text/plain; version=0.0.4`, a body the official parser accepts, every family named
`shardserve_*`, counters that are not negative, and histograms whose buckets are cumulative and
end in `+Inf` equal to `_count`. On success prints one JSON object on stdout,
{family name: {"type": ..., "samples": [{"name", "labels", "value"}...]}}, for the caller's own
assertions, and exits 0; otherwise prints the problem on stderr and exits 1 (2 when
prometheus_client is not installed: `pip install -r tests/requirements.txt`).
"""
import json
import math
import sys
import urllib.request


def fail(message):
    print(f"parse_metrics: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(1)
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError as e:
        print(f"parse_metrics: {e}: pip install -r tests/requirements.txt", file=sys.stderr)
        sys.exit(2)

    url = sys.argv[1]
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            status = response.status
            content_type = response.headers.get("Content-Type", "")
            body = response.read().decode("utf-8")
    except Exception as e:  # noqa: BLE001 - any failure to fetch is the answer
        fail(f"GET {url}: {e}")
    if status != 200:
        fail(f"GET {url}: HTTP {status}")
    if not content_type.startswith("text/plain; version=0.0.4"):
        fail(f"GET {url}: Content-Type {content_type!r}, expected text/plain; version=0.0.4")

    try:
        families = list(text_string_to_metric_families(body))
    except Exception as e:  # noqa: BLE001 - the parser's verdict
        fail(f"prometheus_client cannot parse {url}: {e}\n{body}")

    out = {}
    for family in families:
        if not family.name.startswith("shardserve_"):
            fail(f"family {family.name}: not prefixed shardserve_")
        if family.name in out:
            fail(f"family {family.name}: appears twice")
        samples = [{"name": s.name, "labels": dict(s.labels), "value": s.value}
                   for s in family.samples]
        if family.type == "counter":
            for s in samples:
                if s["value"] < 0 or math.isnan(s["value"]):
                    fail(f"counter sample {s}: negative or NaN")
        if family.type == "histogram":
            check_histogram(family.name, samples)
        out[family.name] = {"type": family.type, "samples": samples}
    json.dump(out, sys.stdout)
    print()


def check_histogram(name, samples):
    # Group by the labels other than `le`.
    series = {}
    for s in samples:
        labels = {k: v for k, v in s["labels"].items() if k != "le"}
        key = json.dumps(labels, sort_keys=True)
        entry = series.setdefault(key, {"buckets": [], "count": None, "sum": None})
        if s["name"] == name + "_bucket":
            entry["buckets"].append((float(s["labels"]["le"]), s["value"]))
        elif s["name"] == name + "_count":
            entry["count"] = s["value"]
        elif s["name"] == name + "_sum":
            entry["sum"] = s["value"]
    for key, entry in series.items():
        buckets = entry["buckets"]
        if not buckets or buckets[-1][0] != math.inf:
            fail(f"histogram {name}{key}: no +Inf bucket last")
        bounds = [b for b, _ in buckets]
        if bounds != sorted(bounds):
            fail(f"histogram {name}{key}: bucket bounds not ascending: {bounds}")
        counts = [c for _, c in buckets]
        if any(b < a for a, b in zip(counts, counts[1:])):
            fail(f"histogram {name}{key}: buckets not cumulative: {counts}")
        if entry["count"] is None or entry["sum"] is None:
            fail(f"histogram {name}{key}: missing _count or _sum")
        if counts[-1] != entry["count"]:
            fail(f"histogram {name}{key}: +Inf bucket {counts[-1]} != _count {entry['count']}")


if __name__ == "__main__":
    main()
