"""One distill recipe over several seeds: train each, evaluate all on the test split, report mean and range.

    python -m distill.seeds rl --recipe configs/distill/rl.yaml --seeds 0,1,2 --out results/seeds-rl

A figure that holds for one run is not a result. This trains the recipe once per seed (`l2s distill METHOD
--seed S`, each its own model under --models-dir; a finished one is reused and an interrupted RL seed continues
from its last checkpoint, so an interrupted sweep resumes),
evaluates them beside the model they started from with `l2s eval --offline` (greedy, the lab's test split —
which no method trains or selects on), and writes `seeds.json` and `seeds.md`: one row per seed, then the mean
and the range, and `errors.md` (`l2s lab errors`: each wrong answer's first mistake by kind, and what the variants
kept of the long trace). For RL it also draws every seed's training and validation curves on one plot.

The RL goal (issue #12, k1.5's long2short claim): accuracy within 1 point of the start at no more than 40% of
its mean reasoning tokens.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from distill.reporting import LOGGING_FIELDS
from distill.rl import ROLLOUT_FIELDS
from l2s.atomic import save_figure_atomic, write_text_atomic
from l2s.cards import read_card
from l2s.jsonl import read_yaml
from l2s.lab.errors import error_table
from l2s.lab.errors import render as render_errors

GOAL_ACCURACY_DROP = 0.01
GOAL_TOKEN_RATIO = 0.40


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill.seeds", description=__doc__.split("\n\n")[0])
    parser.add_argument("method", choices=["rl", "shortest", "dpo"])
    parser.add_argument("--recipe", required=True, help="the recipe YAML (its seed is overridden per run)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--model", default=None, help="the start model (default: the recipe's)")
    parser.add_argument("--name", default=None, help="model name prefix (default: lab-METHOD)")
    parser.add_argument("--models-dir", default="runs/seeds", help="where the per-seed models go")
    parser.add_argument("--eval-problems", type=int, default=500, help="test problems the goal is judged on")
    parser.add_argument(
        "--wide-eval-problems",
        type=int,
        default=0,
        help="also evaluate on this many test problems (the lab's whole test split: 1092), for a narrower interval "
        "than 500 problems give; reported beside, not instead",
    )
    parser.add_argument("--out", required=True, help="results directory")
    args = parser.parse_args(argv)

    recipe = read_yaml(args.recipe, "recipe")
    start = Path(args.model or recipe["model"])
    name = args.name or f"lab-{args.method}"
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    wall = {}
    for seed in seeds:
        model_dir = Path(args.models_dir) / f"{name}-s{seed}"
        card = read_card(model_dir)
        if card:
            changed = recipe_changes(card, trained_recipe(args.method, args.recipe, seed))
            if changed:
                raise SystemExit(
                    f"{model_dir} was trained with another recipe ({', '.join(changed)} differ): delete it or "
                    "give another --models-dir"
                )
            print(f"{model_dir}: finished earlier with this recipe, reused")
            continue
        began = time.time()
        command = ["distill", args.method, "--recipe", args.recipe, "--seed", str(seed)]
        command += ["--model", str(start), "--out", str(model_dir)]
        if args.method == "rl":  # (an interrupted seed continues from its last checkpoint, to the same model)
            command.append("--resume")
        print("+ l2s", " ".join(command), flush=True)
        subprocess.run([sys.executable, "-m", "l2s.cli", *command], check=True)
        wall[seed] = round(time.time() - began, 1)

    models = [start] + [Path(args.models_dir) / f"{name}-s{seed}" for seed in seeds]

    def evaluate(problems: int, evaluation: Path) -> dict:
        command = [sys.executable, "-m", "l2s.cli", "eval", "--offline", "--task", "lab", "--budgets", "none"]
        command += ["--num-problems", str(problems), "--reference", start.name, "--out", str(evaluation)]
        for model in models:
            command += ["--model", str(model)]
        subprocess.run(command, check=True)
        results = {r["model"]: r for r in json.loads((evaluation / "results.json").read_text())["results"]}
        return summarise(args.method, start.name, name, seeds, results, wall, models) | {"test_problems": problems}

    evaluation = out / "eval"
    summary = evaluate(args.eval_problems, evaluation)
    if args.wide_eval_problems:
        summary["wide"] = evaluate(args.wide_eval_problems, out / "eval-wide")
    summary["command"] = "python -m distill.seeds " + " ".join(sys.argv[1:] if argv is None else argv)
    write_text_atomic(out / "seeds.json", json.dumps(summary, indent=2) + "\n")
    report = table(summary) + ("\n" + table(summary["wide"]) if "wide" in summary else "")
    write_text_atomic(out / "seeds.md", report)
    # where the lost points went (first mistake by kind, the long trace's optional parts kept): `l2s lab errors`
    write_text_atomic(out / "errors.md", render_errors(error_table(evaluation / "samples.jsonl")) + "\n")
    if args.method == "rl":
        plot_rl_curves(models[1:], seeds, out / "training_curves.png")
    print(report)
    return 0


def trained_recipe(method: str, path: str, seed: int) -> dict:
    """Every setting a seed's run gets (the YAML, validated, with the code's defaults), as its card records them."""
    from distill.dpo import DPORecipe
    from distill.rl import RLRecipe
    from distill.shortest import ShortestRecipe

    recipe_class = {"rl": RLRecipe, "shortest": ShortestRecipe, "dpo": DPORecipe}[method]
    return recipe_class.load(path, {"seed": seed}).model_dump()


def recipe_changes(card: dict, recipe: dict) -> list[str]:
    """The recipe fields (other than the start model, given per sweep, the trackers, and where RL's samples come
    from, which changes nothing they are) whose value in a finished model's card is not the recipe's: a sweep must
    not report a model trained with an earlier version of its recipe (or of the code's defaults)."""
    trained = card.get("recipe", {})
    ignored = ("model", *LOGGING_FIELDS, *ROLLOUT_FIELDS)
    return sorted(key for key, value in recipe.items() if key not in ignored and trained.get(key) != value)


def summarise(method, start_name, name, seeds, results, wall, models) -> dict:
    start = results[start_name]
    rows = []
    for seed, model in zip(seeds, models[1:]):
        result = results[f"{name}-s{seed}"]
        card = read_card(model) or {}
        ratio = result["mean_reasoning_tokens"] / start["mean_reasoning_tokens"]
        rows.append(
            {
                "seed": seed,
                "accuracy": result["accuracy"],
                "accuracy_ci95": result["accuracy_ci95"],
                "by_level": {level: v["accuracy"] for level, v in result["by_level"].items()},
                "mean_reasoning_tokens": result["mean_reasoning_tokens"],
                "token_ratio": ratio,
                "aes": result["aes"],
                "goal_met": result["accuracy"] >= start["accuracy"] - GOAL_ACCURACY_DROP - 1e-9
                and ratio <= GOAL_TOKEN_RATIO,
                "selected_iteration": card.get("training", {}).get("selected_iteration"),
                "wall_seconds": wall.get(seed),
            }
        )

    def spread(key):
        values = [row[key] for row in rows]
        return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}

    return {
        "method": method,
        "start": {
            "model": start_name,
            "accuracy": start["accuracy"],
            "mean_reasoning_tokens": start["mean_reasoning_tokens"],
        },
        "goal": f"accuracy >= start - {GOAL_ACCURACY_DROP:.0%} and reasoning tokens <= {GOAL_TOKEN_RATIO:.0%} of start",
        "seeds": rows,
        "summary": {key: spread(key) for key in ("accuracy", "mean_reasoning_tokens", "token_ratio", "aes")},
        "goal_met": f"{sum(row['goal_met'] for row in rows)} of {len(rows)}",
    }


def table(summary: dict) -> str:
    start = summary["start"]
    lines = [
        f"# {summary['method']} over seeds, from {start['model']} "
        f"({start['accuracy']:.1%} at {start['mean_reasoning_tokens']:.1f} reasoning tokens), "
        f"on {summary['test_problems']} test problems",
        "",
        "| seed | accuracy (95% CI) | by level 1 / 2 / 3 | mean reasoning tokens (vs start) | AES | kept iteration "
        "| goal met |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["seeds"]:
        low, high = row["accuracy_ci95"]
        levels = " / ".join(f"{100 * row['by_level'][k]:.1f}" for k in sorted(row["by_level"]))
        kept = "–" if row["selected_iteration"] is None else str(row["selected_iteration"])
        lines.append(
            f"| {row['seed']} | {row['accuracy']:.1%} ({low:.1%}–{high:.1%}) | {levels} | "
            f"{row['mean_reasoning_tokens']:.1f} ({row['token_ratio']:.0%}) | {row['aes']:+.3f} | {kept} "
            f"| {'yes' if row['goal_met'] else 'no'} |"
        )
    s = summary["summary"]
    lines.append(
        f"| **mean (range)** | **{s['accuracy']['mean']:.1%}** ({s['accuracy']['min']:.1%}–{s['accuracy']['max']:.1%}) "
        f"| | **{s['mean_reasoning_tokens']['mean']:.1f}** ({s['token_ratio']['mean']:.0%}; "
        f"{s['token_ratio']['min']:.0%}–{s['token_ratio']['max']:.0%}) "
        f"| **{s['aes']['mean']:+.3f}** ({s['aes']['min']:+.3f}–{s['aes']['max']:+.3f}) | | {summary['goal_met']} |"
    )
    lines += ["", f"Goal: {summary['goal']}.", ""]
    return "\n".join(lines)


def plot_rl_curves(models: list[Path], seeds: list[int], path: Path) -> None:
    runs = []
    for model, seed in zip(models, seeds):
        training = (read_card(model) or {}).get("training", {})
        runs.append(
            (
                f"seed {seed}",
                training.get("history", []),
                training.get("validation", []),
                training.get("selected_iteration"),
            )
        )
    plot_runs(runs, path, "RL over seeds (star: the checkpoint kept on the validation split)")


def plot_run_dirs(run_dirs: list[Path], path: Path, title: str) -> None:
    """The same plot from RL work directories (runs/rl/NAME: metrics.jsonl, validation.jsonl)."""
    runs = []
    for run_dir in run_dirs:
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        validation = [json.loads(line) for line in (run_dir / "validation.jsonl").read_text().splitlines()]
        chosen = next((v["iteration"] for v in validation if v.get("selected")), None)
        runs.append((run_dir.name, history, validation, chosen))
    plot_runs(runs, path, title)


def plot_runs(runs: list[tuple], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distill.rl import draw_training_curve

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for index, (label, history, validation, chosen) in enumerate(runs):
        draw_training_curve(axes, history, validation, chosen, label=label, color=f"C{index}")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
