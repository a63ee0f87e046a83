"""`calibration.json`: what the server needs to turn `reasoning_effort` and `model: "auto"` into measurements.

Rule for effort budgets (per variant, from its unbudgeted samples' reasoning lengths):
    low = 25th percentile, medium = median, high = 90th percentile  (rounded up; nested by construction)
so `high` lets nine in ten of the variant's natural reasonings finish, `medium` half, `low` a quarter.

`auto` reads the per-budget accuracies: for a request's budget it takes the variant with the highest accuracy
at the largest evaluated budget not above it (ties go to fewer reasoning tokens; see server/budgets.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from eval.metrics import percentile
from l2s.atomic import write_text_atomic


def build_calibration(records: list[dict], results: list[dict], meta: dict) -> dict:
    variants = {}
    for model in dict.fromkeys(r["model"] for r in results):
        lengths = [
            s["reasoning_tokens"]
            for s in records
            if s["model"] == model and s["budget"] is None and not s.get("effort")
        ]
        entry: dict = {
            "budgets": [
                {"budget": r["budget"], "accuracy": r["accuracy"], "mean_reasoning_tokens": r["mean_reasoning_tokens"]}
                for r in results
                if r["model"] == model and not r["effort"]
            ]
        }
        if lengths:
            quantiles = {f"p{q}": percentile(lengths, q) for q in (10, 25, 50, 75, 90)}
            entry["reasoning_length_quantiles"] = quantiles
            entry["efforts"] = {
                "low": math.ceil(quantiles["p25"]),
                "medium": math.ceil(quantiles["p50"]),
                "high": math.ceil(quantiles["p90"]),
            }
        variants[model] = entry
    return {
        "rule": "efforts: low=p25, medium=p50, high=p90 of unbudgeted reasoning tokens; auto: best accuracy "
        "at the largest measured budget <= the request's, ties to fewer tokens",
        "source": meta,
        "variants": variants,
    }


def write_calibration(path: Path, calibration: dict) -> None:
    write_text_atomic(path, json.dumps(calibration, indent=2) + "\n")
