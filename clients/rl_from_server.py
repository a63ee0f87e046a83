"""The whole RL recipe with its rollouts from a rollout server, against the same seed from its own engine (#16).

    python clients/rl_from_server.py --recipe configs/distill/rl.yaml --seed 0 --model models/lab-long \
        --reference runs/seeds-first-build/lab-rl-s0 --out results/rl-from-server

Starts `l2s distill rollout-server` on `--model` (loopback), trains `l2s distill rl --recipe R --seed S` from it
with the weights handed over by `--rollout-weights` (default: `group`, a process group of their own), then compares
the model with `--reference` — a finished run of the same recipe, seed and start on its own colocated engine (e.g.
`make lab-rl-seeds`' seed 0): every iteration's metrics (timings aside), every validation score, the kept iteration
and the weights. Writes OUT/comparison.json and OUT/summary.md. Long (a whole run: ~30 min here), so a make target
(`make lab-rl-from-server`), not a test; `tests/test_distributed.py` checks the same on 2 iterations.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from clients.bench_distill import ROOT, with_rollout_server

TIMINGS = ("sampling_seconds", "training_seconds")
# the engine's log-probabilities of what it sampled against the trainer's: a server sends them as JSON text, so they
# come back rounded (~1e-9 apart) — compared within a tolerance, everything else exactly
GAP = "engine_logprob_gap"


def compare(reference: Path, served: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    cards = [json.loads((model / "card.json").read_text())["training"] for model in (reference, served)]
    histories = [[{k: v for k, v in line.items() if k not in TIMINGS} for line in card["history"]] for card in cards]
    exact = [[{k: v for k, v in line.items() if k != GAP} for line in history] for history in histories]
    differing = [a["iteration"] for a, b in zip(*exact, strict=True) if a != b]
    gaps = [abs(a[GAP] - b[GAP]) for a, b in zip(*histories) if a.get(GAP) is not None and b.get(GAP) is not None]
    weights = [load_file(model / "model.safetensors") for model in (reference, served)]
    largest = max((weights[0][name] - weights[1][name]).abs().max().item() for name in weights[0])
    return {
        "iterations": len(histories[0]),
        "iterations_with_different_metrics": differing,
        f"largest_{GAP}_difference": max(gaps, default=0.0),
        "same_validation_scores": cards[0]["validation"] == cards[1]["validation"],
        "selected_iteration": [card["selected_iteration"] for card in cards],
        "same_weight_names": weights[0].keys() == weights[1].keys(),
        "largest_weight_difference": largest,
        "identical_weights": all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", required=True, help="the start (the reference's)")
    parser.add_argument("--reference", type=Path, required=True, help="the same run on its own engine, finished")
    parser.add_argument("--rollout-weights", choices=("checkpoint", "group"), default="group")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "runs" / "rl-from-server")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    served = args.models_dir / f"{args.reference.name}-from-server"

    def train(url: str) -> float:
        began = time.time()
        command = [sys.executable, "-m", "l2s.cli", "distill", "rl", "--recipe", args.recipe, "--seed",
                   str(args.seed), "--model", args.model, "--rollout-server", url, "--rollout-weights",
                   args.rollout_weights, "--resume", "--out", str(served)]  # fmt: skip
        print("+", " ".join(command[2:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
        return round(time.time() - began, 1)

    if (served / "card.json").is_file():  # rerunning compares again (the time: the training run's, if recorded)
        earlier = args.out / "comparison.json"
        wall = json.loads(earlier.read_text())["wall_seconds"] if earlier.is_file() else None
    else:
        wall = with_rollout_server(args.model, train)
    result = {"recipe": args.recipe, "seed": args.seed, "start": args.model, "reference": str(args.reference),
              "served": str(served), "rollout_weights": args.rollout_weights, "wall_seconds": wall,
              **compare(args.reference, served)}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.json").write_text(json.dumps(result, indent=1) + "\n")
    verdict = (
        "the same run"
        if result["identical_weights"] and not result["iterations_with_different_metrics"]
        else "NOT the same run"
    )
    (args.out / "summary.md").write_text(
        f"# RL from a rollout server vs its own engine: {verdict}\n\n"
        f"`{args.recipe}`, seed {args.seed}, from `{args.model}`; weights to the server by `{args.rollout_weights}`; "
        f"{wall} s.\n\n| | |\n|---|---|\n" + "".join(f"| {key} | {value} |\n" for key, value in result.items())
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
