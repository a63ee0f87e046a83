"""Serving on Ray Serve against the single-process server: the cost of the extra hops, and what a second replica
buys.

    python clients/bench_ray.py [--model models/lab-long] [--concurrency 32] [--requests 96] [--rounds 3]
        [--passes 2] --out DIR

Serves the model three ways, one at a time on an otherwise idle machine: (a) `l2s serve` (one vLLM engine in the
server's process tree), (b) `l2s serve --ray` with one replica, (c) `l2s serve --ray` with two; and runs
clients/bench.py's streaming workload against each (`--rounds` runs, medians reported): output tokens/s, TTFT
p50/p99, TPOT. The three are served in turn `--passes` times, and the ratios are also given per pass: a shared
machine's speed drifts over minutes (the CPU time the hypervisor took, `steal`, is recorded with every server's
rounds), and a ratio of two servers measured minutes apart carries that drift. Writes DIR/bench_ray.json. A
benchmark, not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import psutil
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
    parser.add_argument("--passes", type=int, default=2, help="times the three servers are measured in turn")
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
    passes = []  # per pass: label -> medians of its rounds, the rounds, and the share of CPU time stolen meanwhile
    for number in range(args.passes):
        measured = {}
        for label, replicas in setups.items():
            process, url = serve(model, out, label, replicas, args.stream_interval_ms)
            try:
                measure(url, model.name, prompts[:8], args.concurrency, {})  # warm-up
                before = psutil.cpu_times()
                rounds = [measure(url, model.name, prompts, args.concurrency, {}) for _ in range(args.rounds)]
                after = psutil.cpu_times()
            finally:
                stop_server(process)
            measured[label] = {
                **{key: statistics.median(r[key] for r in rounds) for key in KEYS},
                "steal_share": (after.steal - before.steal) / max(sum(after) - sum(before), 1e-9),
                "rounds": rounds,
            }
            print(f"pass {number + 1}", label, {key: round(measured[label][key], 4) for key in KEYS}, flush=True)
        passes.append(measured)

    # every server's medians over all its rounds, and the ratios per pass (servers measured minutes apart)
    results = {
        label: {key: statistics.median(r[key] for p in passes for r in p[label]["rounds"]) for key in KEYS}
        for label in setups
    }
    single, ray_one, ray_two = (results[label] for label in setups)

    def per_pass(ratio) -> list[float]:
        return [ratio(p["single-process"], p["ray-1-replica"], p["ray-2-replicas"]) for p in passes]

    summary = {
        "ray_vs_single_throughput": ray_one["output_tokens_per_s"] / single["output_tokens_per_s"],
        "ray_vs_single_ttft_p50_ms": 1000 * (ray_one["ttft_p50_s"] - single["ttft_p50_s"]),
        "two_vs_one_replica_throughput": ray_two["output_tokens_per_s"] / ray_one["output_tokens_per_s"],
        "per_pass": {
            "ray_vs_single_throughput": per_pass(lambda a, b, c: b["output_tokens_per_s"] / a["output_tokens_per_s"]),
            "ray_vs_single_ttft_p50_ms": per_pass(lambda a, b, c: 1000 * (b["ttft_p50_s"] - a["ttft_p50_s"])),
            "two_vs_one_replica_throughput": per_pass(
                lambda a, b, c: c["output_tokens_per_s"] / b["output_tokens_per_s"]
            ),
        },
    }
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "model": str(model),
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "passes_run": args.passes,
        "stream_interval_ms": args.stream_interval_ms,
        "results": results,
        "passes": passes,
        "summary": summary,
    }
    (out / "bench_ray.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
