"""Token-efficiency measures (SPEC §5), computed from sample records.

A sample record has at least: `correct` (bool), `reasoning_tokens`, `answer_tokens`; in API mode also
`ttft`, `ttfa` and `latency` in seconds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

# O1-Pruner's accuracy-efficiency score weights: reward accuracy gains by 3, punish losses by 5.
AES_GAIN_WEIGHT = 3.0
AES_LOSS_WEIGHT = 5.0


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion; well-behaved at 0 and 1 (unlike the normal interval)."""
    if total == 0:
        return (0.0, 0.0)
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def aes(accuracy: float, length: float, reference_accuracy: float, reference_length: float) -> float | None:
    """Accuracy-efficiency score against a reference: ΔL + 3·ΔA if ΔA ≥ 0, else ΔL + 5·ΔA."""
    if reference_accuracy <= 0 or reference_length <= 0:
        return None
    delta_length = (reference_length - length) / reference_length
    delta_accuracy = (accuracy - reference_accuracy) / reference_accuracy
    weight = AES_GAIN_WEIGHT if delta_accuracy >= 0 else AES_LOSS_WEIGHT
    return delta_length + weight * delta_accuracy


def summarize(samples: Iterable[dict], budget: int | None = None) -> dict:
    """Accuracy, token statistics and budget adherence of one group of samples (one variant × budget)."""
    samples = list(samples)
    total = len(samples)
    correct = sum(1 for s in samples if s["correct"])
    reasoning = [s["reasoning_tokens"] for s in samples]
    answer = [s["answer_tokens"] for s in samples]
    completion = [r + a for r, a in zip(reasoning, answer)]
    low, high = wilson_interval(correct, total)
    summary = {
        "num_samples_total": total,
        "accuracy": correct / total if total else 0.0,
        "accuracy_ci95": [low, high],
        "mean_reasoning_tokens": statistics.mean(reasoning) if total else 0.0,
        "median_reasoning_tokens": statistics.median(reasoning) if total else 0.0,
        "p90_reasoning_tokens": percentile(reasoning, 90),
        "mean_answer_tokens": statistics.mean(answer) if total else 0.0,
        "median_answer_tokens": statistics.median(answer) if total else 0.0,
        "p90_answer_tokens": percentile(answer, 90),
        "mean_completion_tokens": statistics.mean(completion) if total else 0.0,
        "tokens_per_correct": sum(completion) / correct if correct else None,
        "budget_violations": sum(1 for r in reasoning if budget is not None and r > budget),
        "mean_relative_length_error": (
            statistics.mean(abs(r - budget) / budget for r in reasoning) if budget and total else None
        ),
    }
    for timing in ("ttft", "ttfa", "latency"):
        values = [s[timing] for s in samples if s.get(timing) is not None]
        if values:
            summary[f"mean_{timing}_s"] = statistics.mean(values)
            summary[f"p50_{timing}_s"] = percentile(values, 50)
            summary[f"p90_{timing}_s"] = percentile(values, 90)
    return summary
