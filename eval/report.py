"""Turn sample records into `results.json`, `report.md` and the two plots."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from eval.metrics import AES_GAIN_WEIGHT, AES_LOSS_WEIGHT, aes, summarize
from l2s.atomic import save_figure_atomic, write_text_atomic


def _condition_order(record: dict) -> tuple:
    """Unbudgeted last (it is the largest budget), efforts after budgets."""
    if record.get("effort"):
        return (
            2,
            ["none", "low", "medium", "high"].index(record["effort"])
            if record["effort"] in ("none", "low", "medium", "high")
            else 9,
        )
    return (1, float("inf")) if record["budget"] is None else (0, record["budget"])


def build_results(records: list[dict], models: list[str], reference: str | None) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in records:
        groups[(record["model"], record["condition"])].append(record)
    results = []
    for (model, _condition), samples in groups.items():
        first = samples[0]
        summary = summarize(samples, first["budget"])
        by_level = defaultdict(list)
        for sample in samples:
            by_level[sample["level"]].append(sample)
        results.append(
            {
                "model": model,
                "budget": first["budget"],
                "effort": first["effort"],
                "condition": first["condition"],
                "num_problems": len({s["problem_id"] for s in samples}),
                "num_samples": len(samples) // max(1, len({s["problem_id"] for s in samples})),
                **summary,
                "by_level": {
                    level: {
                        "accuracy": s["accuracy"],
                        "mean_reasoning_tokens": s["mean_reasoning_tokens"],
                        "num_samples_total": s["num_samples_total"],
                    }
                    for level, s in sorted((lvl, summarize(group)) for lvl, group in by_level.items())
                },
            }
        )
    order = {name: i for i, name in enumerate(models)}
    results.sort(key=lambda r: (order.get(r["model"], 99), _condition_order(r)))
    _add_aes(results, reference)
    return results


def _add_aes(results: list[dict], reference: str | None) -> None:
    """AES of every record against the reference model's unbudgeted record (length = completion tokens)."""
    base = next((r for r in results if r["model"] == reference and r["budget"] is None and not r["effort"]), None)
    for record in results:
        record["aes"] = (
            None
            if base is None
            else aes(
                record["accuracy"], record["mean_completion_tokens"], base["accuracy"], base["mean_completion_tokens"]
            )
        )
        record["aes_reference"] = reference if base is not None else None


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_report(out_dir: Path, results: list[dict], meta: dict) -> None:
    lines = [
        "# Evaluation report",
        "",
        f"Task `{meta['task']}`, {meta['num_problems']} problems × {meta['samples']} sample(s), "
        f"temperature {meta['temperature']}, mode {meta['mode']}. AES = ΔL + {AES_GAIN_WEIGHT:g}·ΔA if ΔA ≥ 0 "
        f"else ΔL + {AES_LOSS_WEIGHT:g}·ΔA, against `{meta.get('reference')}` unbudgeted, L = mean completion "
        "tokens.",
        "",
        "| model | budget | accuracy | 95% CI | reasoning tokens mean / median / p90 | answer tokens | "
        "tokens per correct | AES | violations | rel. length error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['condition']} | {100 * r['accuracy']:.1f}% | "
            f"{100 * r['accuracy_ci95'][0]:.1f}–{100 * r['accuracy_ci95'][1]:.1f} | "
            f"{_fmt(r['mean_reasoning_tokens'])} / {_fmt(r['median_reasoning_tokens'])} / "
            f"{_fmt(r['p90_reasoning_tokens'])} | {_fmt(r['mean_answer_tokens'])} | {_fmt(r['tokens_per_correct'])} | "
            f"{_fmt(r['aes'], 3)} | {r['budget_violations']} | {_fmt(r['mean_relative_length_error'], 2)} |"
        )
    if any("mean_ttft_s" in r for r in results):
        lines += [
            "",
            "## Latency (API mode)",
            "",
            "| model | budget | TTFT p50 / p90 (s) | first answer token p50 / p90 (s) | latency p50 / p90 (s) |",
            "|---|---|---|---|---|",
        ]
        for r in results:
            if "mean_ttft_s" in r:
                lines.append(
                    f"| {r['model']} | {r['condition']} | {r['p50_ttft_s']:.3f} / {r['p90_ttft_s']:.3f} | "
                    f"{_fmt(r.get('p50_ttfa_s'), 3)} / {_fmt(r.get('p90_ttfa_s'), 3)} | "
                    f"{r['p50_latency_s']:.3f} / {r['p90_latency_s']:.3f} |"
                )
    levels = sorted({level for r in results for level in r["by_level"]})
    if len(levels) > 1:
        lines += [
            "",
            "## Accuracy by difficulty level",
            "",
            "| model | budget | " + " | ".join(f"level {lvl}" for lvl in levels) + " |",
            "|---|---|" + "---|" * len(levels),
        ]
        for r in results:
            cells = [
                f"{100 * r['by_level'][lvl]['accuracy']:.1f}% ({r['by_level'][lvl]['mean_reasoning_tokens']:.0f} tok)"
                if lvl in r["by_level"]
                else "–"
                for lvl in levels
            ]
            lines.append(f"| {r['model']} | {r['condition']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "![accuracy vs tokens](accuracy_vs_tokens.png)",
        "",
        "![accuracy vs budget](accuracy_vs_budget.png)",
        "",
    ]
    write_text_atomic(out_dir / "report.md", "\n".join(lines))
    write_text_atomic(out_dir / "results.json", json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


def _pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points no other point beats on both fewer tokens and higher accuracy, by tokens."""
    frontier, best = [], -1.0
    for point in sorted(points, key=lambda p: (p[0], -p[1])):
        if point[1] > best:
            frontier.append(point)
            best = point[1]
    return frontier


def plot(out_dir: Path, results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # accuracy vs tokens: one point per variant, at its unbudgeted run (k1.5 figure 7 style)
    points = []
    for model in dict.fromkeys(r["model"] for r in results):
        own = [r for r in results if r["model"] == model and not r["effort"]]
        chosen = next((r for r in own if r["budget"] is None), max(own, key=lambda r: r["budget"] or 0, default=None))
        if chosen:
            points.append((chosen["mean_reasoning_tokens"], 100 * chosen["accuracy"], model))
    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    span = max((p[0] for p in points), default=1) - min((p[0] for p in points), default=0) or 1
    placed: list[tuple[float, float]] = []
    for tokens, accuracy, model in points:
        axes.scatter(tokens, accuracy, s=60, zorder=3)
        # a label beside a near neighbour's would overlap it (labels run ~a quarter of the width): put it on the
        # side away from the neighbours, below when they are level or above
        near = [a for t, a in placed if abs(tokens - t) < 0.25 * span and abs(accuracy - a) < 6]
        offset = (6, -12) if near and min(near) >= accuracy else (6, 4)
        axes.annotate(model, (tokens, accuracy), textcoords="offset points", xytext=offset, fontsize=9)
        placed.append((tokens, accuracy))
    frontier = _pareto(points)
    if len(frontier) > 1:
        axes.plot([p[0] for p in frontier], [p[1] for p in frontier], "--", color="grey", label="Pareto frontier")
        axes.legend(loc="lower right")
    axes.set_xlabel("mean reasoning tokens")
    axes.set_ylabel("accuracy (%)")
    axes.set_title("Accuracy vs reasoning tokens")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    save_figure_atomic(figure, out_dir / "accuracy_vs_tokens.png", dpi=120)
    plt.close(figure)

    # accuracy vs budget: one curve per variant; unbudgeted drawn at the right end
    budgets = sorted({r["budget"] for r in results if r["budget"] is not None and not r["effort"]})
    unlimited_x = (max(budgets) * 2 if budgets else 1) or 1
    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    for model in dict.fromkeys(r["model"] for r in results):
        own = sorted(
            (r for r in results if r["model"] == model and not r["effort"]),
            key=lambda r: unlimited_x if r["budget"] is None else r["budget"],
        )
        xs = [unlimited_x if r["budget"] is None else r["budget"] for r in own]
        axes.plot(xs, [100 * r["accuracy"] for r in own], marker="o", label=model)
    ticks = budgets + [unlimited_x]
    axes.set_xscale("symlog", linthresh=1)
    axes.set_xticks(ticks)
    axes.set_xticklabels([str(b) for b in budgets] + ["none"])
    axes.set_xlabel("thinking-token budget")
    axes.set_ylabel("accuracy (%)")
    axes.set_title("Accuracy vs budget")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    save_figure_atomic(figure, out_dir / "accuracy_vs_budget.png", dpi=120)
    plt.close(figure)
