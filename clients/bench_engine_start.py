"""How long an offline vLLM engine takes to start on the CPU, and how fast it then generates, with vLLM's own
defaults (engine core and worker as two spawned processes, AOT compilation on) against long2short's
(`l2s.generation.in_process_on_cpu`: the engine in the command's process; `cpu_engine_environment`: AOT
compilation off).

    python clients/bench_engine_start.py --model models/lab-long [--problems 200] [--samples 4] --out DIR

Each setting runs `l2s eval --offline` twice: on 2 problems × 1 sample (start-up: the command's whole wall time)
and on `--problems` × `--samples` sampled completions (generation: samples per second over the wall time less the
start-up run's). One run of each first warms the compile caches, as every run after the first finds them. Writes
DIR/bench_engine_start.json and DIR/summary.md. A benchmark, not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "vllm-defaults": {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_USE_AOT_COMPILE": "1"},
    "long2short": {},  # what in_process_on_cpu and cpu_engine_environment set when the environment does not
}


def eval_seconds(model: str, problems: int, samples: int, env: dict) -> float:
    """Wall seconds of one `l2s eval --offline` in a fresh output directory."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "l2s.cli", "eval", "--offline", "--model", model, "--budgets", "none",
                   "--num-problems", str(problems), "--samples", str(samples), "--max-tokens", "512",
                   "--temperature", "1.0", "--out", out]  # fmt: skip
        start = time.monotonic()
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, **env})
        return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    rows = {}
    for name, env in SETTINGS.items():
        eval_seconds(args.model, 2, 1, env)  # warms the compile caches
        start_up = eval_seconds(args.model, 2, 1, env)
        whole = eval_seconds(args.model, args.problems, args.samples, env)
        generated = args.problems * args.samples
        rows[name] = {
            "start_up_s": round(start_up, 1),
            "generation_run_s": round(whole, 1),
            "samples_per_s": round(generated / max(whole - start_up, 1e-9), 1),
        }
        print(name, rows[name], flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": args.model,
        "problems": args.problems,
        "samples": args.samples,
        "max_tokens": 512,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (args.out / "bench_engine_start.json").write_text(json.dumps({"meta": meta, "settings": rows}, indent=2) + "\n")
    lines = [
        f"# Offline engine start-up and generation ({meta['date']}, {meta['cpus']} CPUs)",
        "",
        f"`l2s eval --offline` of {args.model}: 2 problems (start-up), then {args.problems} × {args.samples} "
        "samples at temperature 1, up to 512 tokens.",
        "",
        "| setting | start-up (s) | generation run (s) | samples/s |",
        "|---|---|---|---|",
        *(f"| {n} | {r['start_up_s']} | {r['generation_run_s']} | {r['samples_per_s']} |" for n, r in rows.items()),
    ]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
