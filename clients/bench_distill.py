"""Distill at scale, measured (issue #16): how fast RL's parts run on this machine, side by side in one run.

    python clients/bench_distill.py --model models/lab-long --out results/bench-distill [--problems 64]

1. Sampling: `distill/sampling.py`'s k = 8 samples per problem on the vLLM engine against Hugging Face's batched
   `generate` (the same prompts, temperature 1, up to 512 new tokens), generated tokens per second, engine start-up
   excluded (reported apart).
2. RL iterations on 1 process and on 2 (`accelerate launch --config_file configs/accelerate/cpu-ddp-2.yaml`, and
   `cpu-deepspeed-2.yaml`: DeepSpeed ZeRO-2) with the same global batch: seconds per iteration (sampling,
   training) and tokens trained per second.
3. RL's rollouts from its own (colocated) engine and from a separate `l2s distill rollout-server` (vLLM's server on
   loopback, weights handed over by checkpoint path, then over a process group: `rollout_weights: group`).

Every RL run is `l2s distill rl` from `--model` with the RL recipe's defaults (no validation, one warm-up iteration
of the length reward, left out of the means) for `--iterations` iterations. Writes DIR/bench_distill.json and
DIR/summary.md. A benchmark, not a test: the figures depend on the machine (on 2 cores, 2 processes share the
cores one process already uses).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
K = 8
MAX_TOKENS = 512


def sampling_vllm(model: str, problems: list) -> dict:
    from distill.sampling import SampleSettings, draw_samples
    from l2s.generation import EngineSettings, close_engine, open_engine

    started = time.monotonic()
    engine = open_engine(model, EngineSettings())
    start_up = time.monotonic() - started
    try:
        with tempfile.TemporaryDirectory() as cache:
            started = time.monotonic()
            groups = draw_samples(model, problems, SampleSettings(k=K, max_tokens=MAX_TOKENS), Path(cache), engine)
            seconds = time.monotonic() - started
    finally:
        close_engine(engine)
    tokens = sum(len(sample.token_ids) for group in groups.values() for sample in group)
    return {"start_up_s": round(start_up, 1), "seconds": round(seconds, 1), "generated_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1)}  # fmt: skip


def sampling_hf(model: str, problems: list, batch_problems: int) -> dict:
    """Batched `generate` (left-padded prompts, `num_return_sequences=k`, the KV cache on), float32 on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from l2s.generation import chat_prompt_ids
    from l2s.tasks import PromptPolicy

    tokenizer = AutoTokenizer.from_pretrained(model)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    prompts = [chat_prompt_ids(tokenizer, PromptPolicy().messages(problem.question)) for problem in problems]
    torch.manual_seed(0)
    tokens, started = 0, time.monotonic()
    for start in range(0, len(prompts), batch_problems):
        batch = prompts[start : start + batch_problems]
        width = max(len(prompt) for prompt in batch)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            output = policy.generate(input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=1.0,
                                     top_k=0, top_p=1.0, max_new_tokens=MAX_TOKENS, num_return_sequences=K,
                                     pad_token_id=pad, eos_token_id=eos)  # fmt: skip
        for row in output[:, width:].tolist():  # the tokens before the first end of sequence (as vLLM's token_ids)
            tokens += row.index(eos) if eos in row else len(row)
    seconds = time.monotonic() - started
    return {"seconds": round(seconds, 1), "generated_tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "batch_problems": batch_problems}  # fmt: skip


def rl_run(model: str, iterations: int, problems: int, launcher: list[str], extra: list[str] = ()) -> dict:
    """One `l2s distill rl` of `iterations` in a fresh $L2S_HOME: per-iteration seconds and tokens trained."""
    with tempfile.TemporaryDirectory() as home:
        command = [*launcher, "distill", "rl", "--model", model, "--iterations", str(iterations),
                   "--problems-per-iteration", str(problems), "--k", str(K), "--max-tokens", str(MAX_TOKENS),
                   "--length-warmup-iterations", "1", "--validation-problems", "0", "--consolidation-iterations", "0",
                   "--out", str(Path(home) / "models" / "bench-rl"), *extra]  # fmt: skip
        env = {**os.environ, "L2S_HOME": home, "L2S_CACHE": "off"}
        started = time.monotonic()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        if done.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        (run,) = (Path(home) / "runs" / "rl").glob("bench-rl-*")
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        epochs = json.loads((run / "recipe.json").read_text())["epochs_per_iteration"]
    measured = history[1:]  # (iteration 1 is the length reward's warm-up, and the first to touch cold caches)
    sampling = sum(h["sampling_seconds"] for h in measured) / len(measured)
    training = sum(h["training_seconds"] for h in measured) / len(measured)
    trained = sum(h["mean_length"] * h["problems"] * K for h in measured) / len(measured)  # tokens per epoch
    return {"wall_s": round(wall, 1), "iterations_measured": len(measured), "epochs": epochs,
            "sampling_s": round(sampling, 1),
            "training_s": round(training, 1), "iteration_s": round(sampling + training, 1),
            "tokens_trained_per_s": round(trained * epochs / training, 1)}  # fmt: skip


def with_rollout_server(model: str, function):
    """Start `l2s distill rollout-server` on loopback, run `function(url)`, stop the server."""
    from l2s.local_server import free_port, wait_healthy

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "l2s.cli", "distill", "rollout-server", "--model", model,
                               "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        wait_healthy(url, server, timeout=600)
        return function(url)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # (the server and its engine processes)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--problems", type=int, default=64, help="problems sampled (k = 8 each), and per RL iteration")
    parser.add_argument("--iterations", type=int, default=4, help="RL iterations per run (≥ 2; the first not measured)")
    parser.add_argument("--hf-batch-problems", type=int, default=16, help="problems per `generate` call (× k rows)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.iterations < 2:
        parser.error("--iterations must be at least 2 (the first, the length reward's warm-up, is not measured)")

    from l2s.tasks import load_task

    problems = load_task("lab", split="train", count=args.problems, seed=1)
    results = {}
    results["sampling_vllm"] = sampling_vllm(args.model, problems)
    print("sampling, vLLM:", results["sampling_vllm"], flush=True)
    results["sampling_hf"] = sampling_hf(args.model, problems, args.hf_batch_problems)
    print("sampling, HF generate:", results["sampling_hf"], flush=True)
    one = [sys.executable, "-m", "l2s.cli"]
    two = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / "cpu-ddp-2.yaml"), "-m", "l2s.cli"]  # fmt: skip
    results["rl_1_process"] = rl_run(args.model, args.iterations, args.problems, one)
    print("rl, 1 process:", results["rl_1_process"], flush=True)
    results["rl_2_processes"] = rl_run(args.model, args.iterations, args.problems, two)
    print("rl, 2 processes:", results["rl_2_processes"], flush=True)
    zero2 = [*two[:4], str(ROOT / "configs" / "accelerate" / "cpu-deepspeed-2.yaml"), *two[5:]]
    results["rl_2_processes_zero2"] = rl_run(args.model, args.iterations, args.problems, zero2)
    print("rl, 2 processes (DeepSpeed ZeRO-2):", results["rl_2_processes_zero2"], flush=True)

    def from_server(url: str) -> tuple[dict, dict]:  # the weights by checkpoint path, then over a process group
        server = ["--rollout-server", url]
        by_path = rl_run(args.model, args.iterations, args.problems, one, server)
        return by_path, rl_run(args.model, args.iterations, args.problems, one, [*server, "--rollout-weights", "group"])

    results["rl_rollout_server"], results["rl_rollout_server_group"] = with_rollout_server(args.model, from_server)
    print("rl, rollout server:", results["rl_rollout_server"], results["rl_rollout_server_group"], flush=True)

    meta = {"model": args.model, "problems": args.problems, "k": K, "max_tokens": MAX_TOKENS,
            "rl_iterations": args.iterations, "cpus": os.cpu_count(), "machine": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_distill.json").write_text(json.dumps({"meta": meta, **results}, indent=2) + "\n")
    (args.out / "summary.md").write_text(summary(meta, results))
    print((args.out / "summary.md").read_text())


def summary(meta: dict, r: dict) -> str:
    vllm, hf = r["sampling_vllm"], r["sampling_hf"]
    one, two, server = r["rl_1_process"], r["rl_2_processes"], r["rl_rollout_server"]
    zero2, group = r["rl_2_processes_zero2"], r["rl_rollout_server_group"]
    rows = [("1 process, colocated engine", one), ("2 processes (DDP), an engine each", two),
            ("2 processes (DeepSpeed ZeRO-2), an engine each", zero2),
            ("1 process, rollout server, weights by checkpoint path", server),
            ("1 process, rollout server, weights over a process group (gloo)", group)]  # fmt: skip
    lines = [
        f"# Distill at scale on this machine ({meta['date']}, {meta['cpus']} CPUs)",
        "",
        f"`python clients/bench_distill.py --model {meta['model']} --problems {meta['problems']} "
        f"--iterations {meta['rl_iterations']}` (`make bench-distill`). {meta['problems']} lab train problems, "
        f"k = {meta['k']}, temperature 1, up to {meta['max_tokens']} tokens.",
        "",
        "## Sampling: vLLM (`distill/sampling.py`) vs Hugging Face `generate`",
        "",
        "| engine | generated tokens | seconds | tokens/s |",
        "|---|---|---|---|",
        f"| vLLM (start-up {vllm['start_up_s']} s, not counted) | {vllm['generated_tokens']} | {vllm['seconds']} | "
        f"{vllm['tokens_per_s']} |",
        f"| HF `generate`, {hf['batch_problems']} problems × {meta['k']} a call | {hf['generated_tokens']} | "
        f"{hf['seconds']} | {hf['tokens_per_s']} |",
        "",
        f"vLLM / HF: **{vllm['tokens_per_s'] / hf['tokens_per_s']:.2f}×** tokens per second (goal ≥ 2×).",
        "",
        f"## RL iterations ({meta['problems']} problems × {meta['k']} samples, {one['epochs']} epochs; "
        f"means over iterations 2–{meta['rl_iterations']})",
        "",
        "| layout | iteration s | sampling s | training s | tokens trained/s | whole run s (start-up included) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {name} | {row['iteration_s']} | {row['sampling_s']} | {row['training_s']} | "
            f"{row['tokens_trained_per_s']} | {row['wall_s']} |"
            for name, row in rows
        ],
        "",
        f"2 processes / 1: {one['iteration_s'] / two['iteration_s']:.2f}× iteration speed, "
        f"{two['tokens_trained_per_s'] / one['tokens_trained_per_s']:.2f}× tokens trained per second. "
        f"ZeRO-2 / DDP: {two['iteration_s'] / zero2['iteration_s']:.2f}× iteration speed. "
        f"Rollout server / colocated: {one['iteration_s'] / server['iteration_s']:.2f}× iteration speed by checkpoint "
        f"path, {one['iteration_s'] / group['iteration_s']:.2f}× over a process group.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
