"""Reasoning budgets: effort → budget per variant, ceilings, and `model: "auto"` routing.

A budget is a number of reasoning tokens; `None` means unlimited. The effective budget of a request is the
smallest of: its explicit `thinking_token_budget` (or its `reasoning_effort` mapped through the variant's
table), the variant's ceiling, and what `max_completion_tokens` leaves room for.

Effort tables and `auto` come from the config, or, when the server was given one, from the eval harness's
calibration file (measured quantiles and accuracies; see `eval/calibration.py` for the rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from l2s.jsonl import CorruptFile, read_json
from server.config import ServerConfig, VariantConfig


@dataclass(frozen=True)
class Calibration:
    """What `l2s eval --calibrate` measured: per variant, effort budgets and accuracy (and mean tokens) at
    each budget it was evaluated at (`None` = unbudgeted)."""

    efforts: dict[str, dict[str, int]]
    accuracy: dict[str, dict[int | None, float]]
    mean_tokens: dict[str, dict[int | None, float]]
    source: dict

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read `calibration.json` (CorruptFile, naming the file, if it is not one)."""
        raw = read_json(path, "calibration")
        efforts, accuracy, mean_tokens = {}, {}, {}
        try:
            for name, entry in raw.get("variants", {}).items():
                efforts[name] = {key: int(value) for key, value in entry.get("efforts", {}).items()}
                accuracy[name], mean_tokens[name] = {}, {}
                for point in entry.get("budgets", []):
                    budget = point["budget"]
                    accuracy[name][budget] = float(point["accuracy"])
                    mean_tokens[name][budget] = float(point.get("mean_reasoning_tokens", 0.0))
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise CorruptFile(f"{path}: not a calibration from `l2s eval --calibrate` ({error!r})") from None
        return cls(efforts=efforts, accuracy=accuracy, mean_tokens=mean_tokens, source=raw)


def as_budget(value: int | None) -> int | None:
    """−1 and None both mean unlimited."""
    return None if value is None or value < 0 else value


def effort_budget(variant: VariantConfig, effort: str, calibration: Calibration | None) -> int | None:
    if effort == "none":
        return 0
    measured = calibration.efforts.get(variant.name, {}) if calibration else {}
    if effort in measured:
        return as_budget(measured[effort])
    return as_budget(getattr(variant.efforts, effort))


def effective_budget(
    variant: VariantConfig, requested: int | None, effort: str | None, calibration: Calibration | None
) -> int | None:
    budget = (
        as_budget(requested)
        if requested is not None
        else (effort_budget(variant, effort, calibration) if effort else None)
    )
    ceiling = as_budget(variant.max_thinking_tokens)
    if ceiling is not None:
        budget = ceiling if budget is None else min(budget, ceiling)
    return budget


def _budget_for_routing(
    requested: int | None, effort: str | None, config: ServerConfig, calibration: Calibration | None
) -> int | None:
    if requested is not None:
        return as_budget(requested)
    if effort is None:
        return None
    if effort == "none":
        return 0
    # an effort without a variant: take the most generous reading among the variants
    budgets = [effort_budget(v, effort, calibration) for v in config.variants]
    return None if any(b is None for b in budgets) else max(budgets)


def choose_variant(
    config: ServerConfig, requested: int | None, effort: str | None, calibration: Calibration | None
) -> str:
    """The variant `model: "auto"` serves for this request's budget."""
    budget = _budget_for_routing(requested, effort, config, calibration)
    names = [variant.name for variant in config.variants]
    if calibration is not None:
        best = _best_measured(names, budget, calibration)
        if best is not None:
            return best
    for rule in config.auto.rules:
        if budget is not None and budget <= rule.max_budget:
            return rule.variant
    return config.auto.default or names[0]


def _best_measured(names: list[str], budget: int | None, calibration: Calibration) -> str | None:
    """Highest measured accuracy at the largest measured budget not above the request's; ties go to fewer
    tokens."""
    candidates = []
    for name in names:
        points = calibration.accuracy.get(name, {})
        usable = [
            b for b in points if b is None and budget is None or b is not None and (budget is None or b <= budget)
        ]
        if not usable:
            continue
        nearest = None if None in usable and budget is None else max(b for b in usable if b is not None)
        candidates.append((-points[nearest], calibration.mean_tokens[name].get(nearest, 0.0), name))
    return min(candidates)[2] if candidates else None
