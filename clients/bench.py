"""Side-by-side serving benchmark: our server against vLLM's own OpenAI server, same model, same client.

    python clients/bench.py [--model models/lab-long] [--concurrency 1,8,32] [--requests 64] [--rounds 2]
                            [--profile] [--baseline GIT_REF] --out DIR

Starts (a) `l2s serve` hosting only the given model and (b) `python -m vllm.entrypoints.openai.api_server` on it
(or, with --baseline, `l2s serve` from a git worktree at that commit),
both on loopback, then runs the same streaming workload against each, alternating, at each concurrency: output
tokens/s, TTFT p50/p99 and TPOT, and the ratios ours/vLLM. Then budgeted vs unbudgeted requests on each, and with
--profile, where each server's CPU time goes (py-spy).
Writes DIR/bench.json. A benchmark, not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from clients import profiling
from l2s.lab.task import generate_problems
from l2s.local_server import free_port, start_server, stop_server, wait_healthy


def start_servers(model: Path, out: Path, baseline_ref: str | None = None) -> tuple[dict, list[subprocess.Popen], list]:
    """Our server and the baseline (vLLM's own server, or ours at git `baseline_ref`), ready; and what to clean up."""
    only = Path(tempfile.mkdtemp(prefix="l2s-bench-"))
    (only / model.name).symlink_to(model.resolve())
    # Both engines' compute on the same core: only one server is under load at a time, and a core that takes
    # more interrupts than the other would otherwise favour one server.
    environment = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0"}
    ours, ours_url = start_server(only, "--config", "", log_path=out / "ours.log", env=environment)
    scratch = [only]
    if baseline_ref:  # `python -m` puts the working directory first on the path: the worktree's code runs
        tree = _worktree(baseline_ref)
        scratch.append(tree)
        name = f"ours@{baseline_ref}"
        theirs, theirs_url = start_server(
            only, "--config", "", log_path=out / "baseline.log", env=environment, cwd=tree
        )
    else:
        name, (theirs, theirs_url) = "vllm", _start_vllm(model, out, environment)
    urls = {"ours": ours_url, name: theirs_url}
    for url, process in zip(urls.values(), (ours, theirs)):
        wait_healthy(url, process)
    return urls, [ours, theirs], scratch


def _start_vllm(model: Path, out: Path, environment: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    command += ["--served-model-name", model.name, "--port", str(port), "--dtype", "float32"]
    command += ["--max-model-len", "1024", "--reasoning-parser", "deepseek_r1", "--no-enable-chunked-prefill"]
    command += ["--max-num-batched-tokens", "8192", "--disable-log-stats"]  # as our engine settings
    log = (out / "vllm.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    return process, f"http://127.0.0.1:{port}"


def _worktree(ref: str) -> Path:
    """A checkout of `ref` beside this one (same installed dependencies), removed by `_clean_up`."""
    tree = Path(tempfile.mkdtemp(prefix="l2s-baseline-"))
    subprocess.run(["git", "worktree", "add", "--detach", "--force", str(tree), ref], check=True, capture_output=True)
    return tree


def _clean_up(scratch: list[Path]) -> None:
    for path in scratch:
        if path.name.startswith("l2s-baseline-"):
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


async def one_stream(client: httpx.AsyncClient, url: str, model: str, prompt: str, extra: dict) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "temperature": 0,
        "max_tokens": 768,
        "stream_options": {"include_usage": True},
        **extra,
    }
    started = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if first is None and any(
                c.get("delta", {}).get("content")
                or c.get("delta", {}).get("reasoning_content")
                or c.get("delta", {}).get("reasoning")
                for c in chunk.get("choices", [])
            ):
                first = time.perf_counter()
    ended = time.perf_counter()
    first = first or ended
    return {
        "ttft": first - started,
        "latency": ended - started,
        "tokens": tokens,
        "tpot": (ended - first) / max(1, tokens - 1),
    }


async def workload(url: str, model: str, prompts: list[str], concurrency: int, extra: dict) -> dict:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:

        async def run(prompt: str) -> dict:
            async with limit:
                return await one_stream(client, url, model, prompt, extra)

        started = time.perf_counter()
        results = await asyncio.gather(*(run(p) for p in prompts))
        elapsed = time.perf_counter() - started
    ttfts = sorted(r["ttft"] for r in results)
    return {
        "requests": len(results),
        "concurrency": concurrency,
        "seconds": elapsed,
        "output_tokens_per_s": sum(r["tokens"] for r in results) / elapsed,
        "completion_tokens_mean": statistics.mean(r["tokens"] for r in results),
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
        "tpot_mean_s": statistics.mean(r["tpot"] for r in results),
    }


# vLLM's engine processes spin for a second after their last step (its shared-memory queue's busy loop): a run
# that starts sooner shares the CPU with the previous server's spinning.
SETTLE_S = 2.0


def measure(url: str, model: str, prompts: list[str], concurrency: int, extra: dict) -> dict:
    """One run of the workload, on an otherwise idle machine."""
    time.sleep(SETTLE_S)
    return asyncio.run(workload(url, model, prompts, concurrency, extra))


def _ratio_range(ours: list[dict], theirs: list[dict], key: str) -> list[float]:
    ratios = [a[key] / b[key] for a, b in zip(ours, theirs)]
    return [min(ratios), max(ratios)]


def _merge_rounds(rounds: list[dict]) -> dict:
    keys = ("output_tokens_per_s", "completion_tokens_mean", "ttft_p50_s", "ttft_p99_s", "tpot_mean_s")
    return {**{k: statistics.median(r[k] for r in rounds) for k in keys}, "rounds": rounds}


def compare_budgeted(url: str, model: str, prompts: list[str], concurrency: int, budget: int, rounds: int) -> dict:
    """Budgeted vs unbudgeted requests on one server, alternating. Budgeted completions are short, and short
    requests pay their fixed costs (HTTP, template, prefill) over fewer tokens; so the comparison is also made
    against unbudgeted requests cut to the budgeted ones' mean length, which leaves only the enforcement's cost."""
    runs: dict[str, list[dict]] = {"budgeted": [], "unbudgeted": [], "unbudgeted_same_length": []}
    measure(url, model, prompts[:4], concurrency, {"thinking_token_budget": budget})  # warm-up
    for _ in range(rounds):
        runs["budgeted"].append(measure(url, model, prompts, concurrency, {"thinking_token_budget": budget}))
        runs["unbudgeted"].append(measure(url, model, prompts, concurrency, {}))
        same_length = round(runs["budgeted"][-1]["completion_tokens_mean"])
        runs["unbudgeted_same_length"].append(measure(url, model, prompts, concurrency, {"max_tokens": same_length}))
    result = {"concurrency": concurrency, "budget": budget, **{k: _merge_rounds(v) for k, v in runs.items()}}
    budgeted = result["budgeted"]["output_tokens_per_s"]
    result["throughput_ratio"] = budgeted / result["unbudgeted"]["output_tokens_per_s"]
    result["same_length_throughput_ratio"] = budgeted / result["unbudgeted_same_length"]["output_tokens_per_s"]
    return result


# Code whose CPU time the profile reports inclusively: ours in the API process, vLLM's budget enforcement in the engine.
WITHIN = {
    # not server/middleware.py nor l2s/cli.py: every request's stack starts with them
    "long2short code": ("(server/routes.py", "(server/service.py", "(server/engine.py", "(l2s/reasoning.py"),
    "vLLM thinking-budget code": ("thinking_budget_state.py",),
}


def profile_servers(
    urls: dict[str, str],
    processes: list[subprocess.Popen],
    model: str,
    prompts: list[str],
    budget_prompts: list[str],
    concurrency: int,
    budget: int,
    out: Path,
) -> dict:
    """One more run against each server, and a budgeted one against ours, with py-spy sampling every process of
    the server: CPU seconds by process, by package and in named code, so that a gap can be placed."""
    runs = [(name, prompts, {}) for name in urls]
    runs.append(("ours-budgeted", budget_prompts, {"thinking_token_budget": budget}))
    servers = dict(zip(urls, processes))
    profiles = {}
    for label, batch, extra in runs:
        name = label.removesuffix("-budgeted")
        path = out / f"profile-{label}.txt"
        recorder = profiling.record(servers[name].pid, path)  # attached during `measure`'s settling pause
        run = measure(urls[name], model, batch, concurrency, extra)
        profiling.stop(recorder)
        profiles[label] = {"run": run, "request": extra, "processes": profiling.summarize(path, within=WITHIN)}
    return profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/lab-long", help="model directory (default: %(default)s)")
    parser.add_argument("--concurrency", default="1,8,32", help="concurrent streams per level (default: %(default)s)")
    parser.add_argument(
        "--requests", type=int, default=64, help="requests per run, at least 8 per stream (default: %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per server (default: %(default)s)")
    parser.add_argument(
        "--budget", type=int, default=32, help="budget of the budgeted comparison (default: %(default)s)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also sample both servers with py-spy at the top concurrency"
    )
    parser.add_argument(
        "--baseline",
        metavar="GIT_REF",
        help="compare with our own server at this commit instead of vLLM's server (a before/after of a change)",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model, out = Path(args.model), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    top = max(levels)
    # Every run at least 8 requests deep per stream: shorter runs measure the ramp-up and the scheduler's luck.
    requests_per_run = {c: max(args.requests, 8 * c) for c in levels}
    prompts = [p.question for p in generate_problems("validation", max(requests_per_run.values()), seed=5)]
    urls, processes, scratch = start_servers(model, out, args.baseline)
    other = next(name for name in urls if name != "ours")
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": str(model),
        "baseline": other,
        "requests_per_run": {str(c): n for c, n in requests_per_run.items()},
        "side_by_side": {},
    }
    try:
        for concurrency in levels:
            batch = prompts[: requests_per_run[concurrency]]
            runs = {"ours": [], other: []}
            measure(urls["ours"], model.name, prompts[:4], concurrency, {})  # warm-up
            measure(urls[other], model.name, prompts[:4], concurrency, {})
            for round_ in range(args.rounds):
                # alternating, and each server first in every other round, so drift and order hit both alike
                for name in ("ours", other) if round_ % 2 == 0 else (other, "ours"):
                    runs[name].append(measure(urls[name], model.name, batch, concurrency, {}))
            ours, theirs = _merge_rounds(runs["ours"]), _merge_rounds(runs[other])
            report["side_by_side"][str(concurrency)] = {
                "ours": ours,
                "baseline": theirs,
                "throughput_ratio": ours["output_tokens_per_s"] / theirs["output_tokens_per_s"],
                # round by round (each pair run back to back): how much of the median ratio is noise
                "throughput_ratio_range": _ratio_range(runs["ours"], runs[other], "output_tokens_per_s"),
                "ttft_p50_ratio": ours["ttft_p50_s"] / theirs["ttft_p50_s"],
                "ttft_p99_ratio": ours["ttft_p99_s"] / theirs["ttft_p99_s"],
                "tpot_ratio": ours["tpot_mean_s"] / theirs["tpot_mean_s"],
            }
            print(
                json.dumps(
                    {
                        concurrency: {
                            k: v for k, v in report["side_by_side"][str(concurrency)].items() if k.endswith("ratio")
                        }
                    }
                )
            )
        # On both servers: a gap that vLLM's own server shows too is the engine's, not ours.
        # Short requests make short runs: four times as many keep the comparison's noise down.
        many = [p.question for p in generate_problems("validation", 4 * len(prompts), seed=6)]
        report["budgeted"] = {
            name: compare_budgeted(url, model.name, many, top, args.budget, args.rounds) for name, url in urls.items()
        }
        if args.profile:
            report["profile"] = profile_servers(urls, processes, model.name, prompts, many, top, args.budget, out)
    finally:
        for process in processes:
            stop_server(process)
        _clean_up(scratch)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(summary_table(report))
    print(summary_table(report))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")


def summary_table(report: dict) -> str:
    """bench.json as the README's tables."""
    baseline = {"vllm": "vLLM"}.get(report.get("baseline", "vllm"), report.get("baseline"))  # or ours@REF
    lines = [
        f"{report['date']}, {report['machine']['cpus']} CPUs, model {report['model']}, "
        f"{'/'.join(map(str, report['requests_per_run'].values()))} streaming requests per run at "
        f"{'/'.join(report['requests_per_run'])} streams, median of the rounds\n",
        f"| streams | output tok/s ours / {baseline} (ratio; range over rounds) "
        f"| TTFT p50 ms ours / {baseline} (ratio) | TTFT p99 ms ours / {baseline} (ratio) "
        f"| TPOT ms ours / {baseline} (ratio) |",
        "|---|---|---|---|---|",
    ]
    for streams, row in report["side_by_side"].items():
        ours, theirs = row["ours"], row["baseline"]
        lines.append(
            f"| {streams} | {ours['output_tokens_per_s']:.0f} / {theirs['output_tokens_per_s']:.0f} "
            f"({row['throughput_ratio']:.2f}; rounds {row['throughput_ratio_range'][0]:.2f}–"
            f"{row['throughput_ratio_range'][1]:.2f}) "
            f"| {1000 * ours['ttft_p50_s']:.0f} / {1000 * theirs['ttft_p50_s']:.0f} ({row['ttft_p50_ratio']:.2f}) "
            f"| {1000 * ours['ttft_p99_s']:.0f} / {1000 * theirs['ttft_p99_s']:.0f} ({row['ttft_p99_ratio']:.2f}) "
            f"| {1000 * ours['tpot_mean_s']:.1f} / {1000 * theirs['tpot_mean_s']:.1f} ({row['tpot_ratio']:.2f}) |"
        )
    for name, budgeted in (report.get("budgeted") or {}).items():
        tok_s = {k: budgeted[k]["output_tokens_per_s"] for k in ("budgeted", "unbudgeted", "unbudgeted_same_length")}
        lengths = {k: budgeted[k]["completion_tokens_mean"] for k in tok_s}
        lines += [
            "",
            f"Budgeted (`thinking_token_budget: {budgeted['budget']}`) vs unbudgeted on {name} at "
            f"{budgeted['concurrency']} streams: {tok_s['budgeted']:.0f} vs {tok_s['unbudgeted']:.0f} output tok/s "
            f"(ratio {budgeted['throughput_ratio']:.2f}; completions of {lengths['budgeted']:.0f} vs "
            f"{lengths['unbudgeted']:.0f} tokens). Against unbudgeted requests cut to the same length "
            f"(`max_tokens: {lengths['unbudgeted_same_length']:.0f}`): {tok_s['unbudgeted_same_length']:.0f} tok/s "
            f"(ratio {budgeted['same_length_throughput_ratio']:.2f}).",
        ]
    for name, profile in (report.get("profile") or {}).items():
        run = profile["run"]
        lines += [
            "",
            f"Profile of {name} ({run['requests']} requests at {run['concurrency']} streams, "
            f"{json.dumps(profile.get('request') or {})}, {run['output_tokens_per_s']:.0f} tok/s under py-spy): "
            "CPU seconds by process",
            "",
            "| process | CPU s | busiest packages (CPU s, innermost frame) | inclusive CPU s |",
            "|---|---|---|---|",
        ]
        for process, entry in profile["processes"].items():
            packages = ", ".join(f"{package} {seconds:.2f}" for package, seconds in list(entry["packages"].items())[:5])
            named = ", ".join(f"{label} {seconds:.2f}" for label, seconds in entry.get("within", {}).items() if seconds)
            lines.append(f"| {process} | {entry['cpu_s']:.2f} | {packages} | {named or '–'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
