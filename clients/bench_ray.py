"""Serving on Ray Serve against the single-process server: the cost of the extra hops, and what a second replica
buys.

    python clients/bench_ray.py [--model models/lab-long] [--concurrency 32] [--requests 96] [--rounds 3] --out DIR

Serves the model three ways, one at a time on an otherwise idle machine: (a) `l2s serve` (one vLLM engine in the
server's process tree), (b) `l2s serve --ray` with one replica, (c) `l2s serve --ray` with two; and runs
clients/bench.py's streaming workload against each (`--rounds` runs, medians reported): output tokens/s, TTFT
p50/p99, TPOT. Writes DIR/bench_ray.json. A benchmark, not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import yaml

from clients.bench import measure
from l2s.lab.task import generate_problems
from l2s.local_server import start_server, stop_server, wait_healthy

KEYS = ("output_tokens_per_s", "completion_tokens_mean", "ttft_p50_s", "ttft_p99_s", "tpot_mean_s")


def serve(model: Path, out: Path, label: str, replicas: int | None, stream_interval_ms: float):
    """`l2s serve` of `model` alone (replicas None), or `l2s serve --ray` with that many replicas; ready."""
    variant = {"name": model.name, "path": str(model.resolve()), "engine": {"kv_cache_gib": 1, "max_num_seqs": 64}}
    extra = []
    if replicas is not None:
        variant["ray"] = {"replicas": replicas, "num_cpus": 0.5, "stream_interval_ms": stream_interval_ms}
        extra = ["--ray"]
    config = out / f"{label}.yaml"
    config.write_text(yaml.safe_dump({"variants": [variant]}))
    empty = Path(tempfile.mkdtemp(prefix="l2s-bench-ray-"))
    process, url = start_server(empty, "--config", str(config), *extra, log_path=out / f"{label}.log")
    wait_healthy(url, process, timeout=900)
    return process, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/lab-long")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--stream-interval-ms",
        type=float,
        default=250,
        help="the replicas' stream_interval_ms (configs/server-ray.yaml's)",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model, out = Path(args.model), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = [p.question for p in generate_problems("validation", args.requests, seed=5)]

    setups = {"single-process": None, "ray-1-replica": 1, "ray-2-replicas": 2}
    results = {}
    for label, replicas in setups.items():
        process, url = serve(model, out, label, replicas, args.stream_interval_ms)
        try:
            measure(url, model.name, prompts[:8], args.concurrency, {})  # warm-up
            rounds = [measure(url, model.name, prompts, args.concurrency, {}) for _ in range(args.rounds)]
        finally:
            stop_server(process)
        results[label] = {**{key: statistics.median(r[key] for r in rounds) for key in KEYS}, "rounds": rounds}
        print(label, {key: round(results[label][key], 4) for key in KEYS}, flush=True)

    single, ray_one, ray_two = (results[label] for label in setups)
    summary = {
        "ray_vs_single_throughput": ray_one["output_tokens_per_s"] / single["output_tokens_per_s"],
        "ray_vs_single_ttft_p50_ms": 1000 * (ray_one["ttft_p50_s"] - single["ttft_p50_s"]),
        "two_vs_one_replica_throughput": ray_two["output_tokens_per_s"] / ray_one["output_tokens_per_s"],
    }
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "model": str(model),
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "stream_interval_ms": args.stream_interval_ms,
        "results": results,
        "summary": summary,
    }
    (out / "bench_ray.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
