"""Many variants for the price of one engine: memory and throughput of a base model plus LoRA variants, hosted
(a) as one engine per variant — each adapter merged into its own full copy of the base, so the variants answer
exactly as the adapters do — and (b) as one engine holding the base with the adapters applied per request; and,
as the memory reference, (c) the base alone on its one engine.

    python clients/bench_lora.py --base models/lab-long --adapter A1 --adapter A2 --adapter A3 \\
        [--requests 128] [--concurrency 32] [--rounds 2] --out DIR

The same mixed traffic on (a) and (b): `--requests` streaming chat requests, greedy, spread evenly over the base and
the variants, `--concurrency` at a time (on (c) all go to the base). Memory is the whole server's — the process and
every engine process under it — as PSS (the proportional set size: a shared page counted once, split between its
processes) and RSS, idle after start-up and at its peak under load (sampled every 0.2 s). Writes DIR/bench_lora.json
and DIR/summary.md. A benchmark, not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import yaml

from clients.bench import SETTLE_S, one_stream
from distill.lora import full_weights
from l2s.lab.task import generate_problems
from l2s.local_server import start_server, stop_server, wait_healthy


def server_memory(pid: int) -> dict:
    """PSS and RSS of a process and all its descendants, in MiB."""
    pss = rss = engines = 0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:  # (a process may end between the listing and the reading)
            info = process.memory_full_info()
            engines += "EngineCore" in " ".join(process.cmdline())
        except psutil.Error:
            continue
        pss += info.pss
        rss += info.rss
    return {"pss_mib": round(pss / 2**20), "rss_mib": round(rss / 2**20), "engines": engines}


class PeakMemory:
    """The largest PSS (and the RSS then) of the server while the block runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, {"pss_mib": 0}, threading.Event()

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            now = server_memory(self.pid)
            if now["pss_mib"] > self.peak["pss_mib"]:
                self.peak = now

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()


async def mixed_workload(url: str, models: list[str], prompts: list[str], concurrency: int) -> dict:
    """Every prompt once, the i-th to models[i % len(models)], `concurrency` streams at a time."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:

        async def run(i: int, prompt: str) -> dict:
            async with limit:
                return await one_stream(client, url, models[i % len(models)], prompt, {"max_tokens": 512})

        started = time.perf_counter()
        results = await asyncio.gather(*(run(i, p) for i, p in enumerate(prompts)))
        elapsed = time.perf_counter() - started
    return {
        "seconds": round(elapsed, 2),
        "output_tokens": sum(r["tokens"] for r in results),
        "output_tokens_per_s": round(sum(r["tokens"] for r in results) / elapsed, 1),
        "ttft_p50_s": round(sorted(r["ttft"] for r in results)[len(results) // 2], 3),
    }


def measure_setup(name: str, variants: list[dict], traffic: list[str], args, out: Path) -> dict:
    """Start a server with `variants`, measure it idle and under `args.rounds` runs of the traffic, stop it."""
    work = Path(tempfile.mkdtemp(prefix=f"l2s-bench-lora-{name}-"))
    config = work / "server.yaml"
    config.write_text(yaml.safe_dump({"variants": variants}))
    env = {**os.environ, "L2S_HOME": str(work), "VLLM_CPU_KVCACHE_SPACE": "1"}
    started = time.perf_counter()
    process, url = start_server(work, "--config", str(config), log_path=out / f"{name}.log", env=env)
    try:
        wait_healthy(url, process, timeout=900)
        startup = time.perf_counter() - started
        time.sleep(SETTLE_S)
        idle = server_memory(process.pid)
        prompts = [p.question for p in generate_problems("test", args.requests, seed=11)]
        runs = []
        for round_ in range(args.rounds):
            time.sleep(SETTLE_S)
            with PeakMemory(process.pid) as peak:
                run = asyncio.run(mixed_workload(url, traffic, prompts, args.concurrency))
            runs.append({**run, "peak": peak.peak})
            print(f"{name} round {round_ + 1}: {run['output_tokens_per_s']} tokens/s, peak {peak.peak['pss_mib']} MiB")
    finally:
        stop_server(process)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "variants": [v["name"] for v in variants],
        "startup_s": round(startup, 1),
        "idle": idle,
        "peak_pss_mib": max(r["peak"]["pss_mib"] for r in runs),
        "output_tokens_per_s": round(sum(r["output_tokens_per_s"] for r in runs) / len(runs), 1),
        "runs": runs,
    }


def summary(report: dict) -> str:
    one, full, lora = report["base_alone"], report["full_engines"], report["one_engine_lora"]
    rows = [
        ("(c) the base alone, one engine", one),
        (f"(a) base + {len(report['adapters'])} variants, one engine each (merged)", full),
        (f"(b) base + {len(report['adapters'])} variants, one engine with LoRA adapters", lora),
    ]
    lines = [
        f"Machine: {report['machine']}; {report['requests']} streaming requests, {report['concurrency']} at a time, "
        f"{report['rounds']} rounds; (a) and (b) the same mixed traffic over the base and the variants.",
        "",
        "| setup | engines | start-up | idle PSS (RSS) | peak PSS under load | output tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['idle']['engines']} | {r['startup_s']:.0f} s | {r['idle']['pss_mib']} MiB "
            f"({r['idle']['rss_mib']} MiB) | {r['peak_pss_mib']} MiB | {r['output_tokens_per_s']:.0f} |"
        )
    ratios = report["ratios"]
    lines += [
        "",
        f"(b) peak memory / (c)'s: {ratios['lora_memory_vs_one_engine']:.2f} (goal ≤ 1.3); "
        f"(b) peak memory / (a)'s: {ratios['lora_memory_vs_full_engines']:.2f}; "
        f"(b) throughput / (a)'s: {ratios['lora_throughput_vs_full_engines']:.2f} (goal ≥ 0.8).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="the base model directory (lab-long)")
    parser.add_argument("--adapter", type=Path, action="append", required=True, help="a LoRA adapter of the base")
    parser.add_argument("--requests", type=int, default=128, help="requests per round (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=32, help="streams at a time (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of the traffic per setup (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    names = [adapter.name for adapter in args.adapter]
    copies = [full_weights(adapter) for adapter in args.adapter]  # each adapter merged into a copy of its base
    base = {"name": args.base.name, "path": str(args.base.resolve())}
    traffic = [base["name"], *names]
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "adapters": [str(a) for a in args.adapter],
        "requests": args.requests,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "base_alone": measure_setup("base-alone", [base], [base["name"]], args, args.out),
        "full_engines": measure_setup(
            "full-engines",
            [base, *({"name": n, "path": str(c)} for n, c in zip(names, copies))],
            traffic,
            args,
            args.out,
        ),
        "one_engine_lora": measure_setup(
            "one-engine-lora",
            [base, *({"name": n, "path": str(a.resolve())} for n, a in zip(names, args.adapter))],
            traffic,
            args,
            args.out,
        ),
    }
    one, full, lora = report["base_alone"], report["full_engines"], report["one_engine_lora"]
    report["ratios"] = {
        "lora_memory_vs_one_engine": round(lora["peak_pss_mib"] / one["peak_pss_mib"], 3),
        "lora_memory_vs_full_engines": round(lora["peak_pss_mib"] / full["peak_pss_mib"], 3),
        "lora_throughput_vs_full_engines": round(lora["output_tokens_per_s"] / full["output_tokens_per_s"], 3),
    }
    (args.out / "bench_lora.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "summary.md").write_text(summary(report))
    print(summary(report))


if __name__ == "__main__":
    main()
