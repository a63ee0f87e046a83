"""The RL recipe works on more than one lucky seed: a shortened run of the committed recipe, on two seeds, each
improves AES over lab-long on held-out test problems by a stated margin. (The full recipe over three seeds is
`make lab-rl-seeds`, a measurement with committed results, not a test.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from l2s.cards import read_card
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.seeds]  # `make test-rl-seeds`, not `make test` (see the Makefile)

# 5 of the recipe's 24 shortening iterations, 32 of its 64 problems each in minibatches of 4 (so each iteration
# takes as many optimiser steps as the recipe's: with AdamW's moments kept, fewer steps shorten too little to
# measure); selection on 64 validation problems (the recipe's rule); no consolidation iterations: all 5 shorten
SHORTENED = ["--iterations", "5", "--problems-per-iteration", "32", "--minibatch-problems", "4"]
SHORTENED += ["--consolidation-iterations", "0", "--validation-problems", "64"]
SEEDS = (0, 1)
# AES over lab-long. Measured here with the lr 1e-4 recipe (2026-12-01): seed 0 +0.200 (99.3% at 177 tokens), seed 1
# +0.098 (98.7% at 193), the same on 2026-12-02 with AES selection every 2 iterations; with lr 1.5e-4 (2026-11-30):
# +0.137 and +0.220;
# a drift like the earlier recipe's (12 points: AES about -0.6) fails it, and so does a run that does not shorten.
MARGIN = 0.05
TEST_PROBLEMS = 150
RECIPE = ROOT / "configs" / "distill" / "rl.yaml"


def _run(cwd, *args):
    result = subprocess.run([sys.executable, "-m", "l2s.cli", *args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def test_shortened_recipe_improves_aes_on_two_seeds(lab_models, tmp_path):
    models = []
    for seed in SEEDS:
        out = tmp_path / f"rl-s{seed}"
        _run(
            tmp_path,
            "distill",
            "rl",
            "--recipe",
            str(RECIPE),
            "--model",
            str(lab_models / "lab-long"),
            *SHORTENED,
            "--seed",
            str(seed),
            "--out",
            str(out),
        )
        card = read_card(out)
        assert card["training"]["validation"][0]["iteration"] == 0  # the start was scored, for the rule
        models.append(out)
    evaluation = tmp_path / "eval"
    command = ["eval", "--offline", "--task", "lab", "--budgets", "none", "--num-problems", str(TEST_PROBLEMS)]
    command += ["--model", str(lab_models / "lab-long"), *sum((["--model", str(m)] for m in models), [])]
    _run(tmp_path, *command, "--reference", "lab-long", "--out", str(evaluation))
    results = {r["model"]: r for r in json.loads((evaluation / "results.json").read_text())["results"]}
    report = {
        m.name: (results[m.name]["accuracy"], results[m.name]["mean_reasoning_tokens"], results[m.name]["aes"])
        for m in models
    }
    for model in models:
        assert results[model.name]["aes"] >= MARGIN, report
