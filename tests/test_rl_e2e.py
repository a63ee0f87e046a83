"""RL end to end on a user's dataset: one iteration. (Resuming after a kill gives the same model bit for bit as an
uninterrupted run with the same seed, which is also the same-seed determinism check: tests/test_kill_resume.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import write_sum_dataset

from l2s.cards import read_card

pytestmark = pytest.mark.slow

SMALL = ["--problems-per-iteration", "6", "--k", "4", "--max-tokens", "400", "--length-warmup-iterations", "1"]
SMALL += ["--validation-problems", "24", "--validate-every", "1"]


def _rl(cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "l2s.cli", "distill", "rl", *SMALL, *args],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=cwd,
    )


def test_one_iteration_on_a_users_dataset(lab_models, tmp_path):
    """One iteration on a jsonl task (math-verify answers); its validation problems are a hashed hold-out of it."""
    jsonl, _ = write_sum_dataset(tmp_path / "data", 800)
    result = _rl(
        tmp_path,
        "--model",
        str(lab_models / "lab-long"),
        "--task",
        f"jsonl:{jsonl}",
        "--iterations",
        "1",
        "--out",
        str(tmp_path / "lab-rl"),
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    card = read_card(tmp_path / "lab-rl")
    assert card["method"] == "rl-opmd" and card["parents"] == ["lab-long"] and card["training"]["iterations"] == 1
    (run_dir,) = (tmp_path / "runs/rl").glob("lab-rl-*")  # keyed on the output's absolute path
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["problems"] == 6
    keys = ("accuracy", "mean_length", "mean_reward", "kl_term", "engine_logprob_gap", "sampling_seconds")
    for key in keys:
        assert key in metrics[0]
    assert metrics[0]["mean_length_spread"] > 0  # the k samples of a problem are independent draws
    assert (run_dir / "training_curve.png").is_file()
    # samples come from the policy being trained: the engine's and the trainer's log-probs agree
    assert metrics[0]["engine_logprob_gap"] < 0.05
    assert [v["iteration"] for v in card["training"]["validation"]] == [0, 1]
    assert card["recipe"]["task"] == f"jsonl:{jsonl}" and card["training"]["validation"][0]["accuracy"] > 0.5
