"""Distill under `accelerate launch` (issue #16): two processes on this CPU (torchrun, gloo). shortest and dpo:
sampling once, training spread by TRL's trainer, the model written once. rl: each process samples and trains on
its share, and two processes give what one gives (same global batch, same seeds), also when killed and
resumed."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_kill_resume import _count, _once, _run, _run_through_kills

pytestmark = pytest.mark.slow

# accelerate 1.x starts one process for `--cpu --num_processes N` unless mpirun is set up; `--multi_gpu` launches
# N processes through torchrun, and the trainer (use_cpu on a machine without a GPU) joins them with gloo
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "l2s.cli"]  # fmt: skip
SEED = 16  # the kill moment is drawn from it


def _launch(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "L2S_HOME": str(home), "L2S_CACHE": "off"}
    done = subprocess.run([*LAUNCH, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_shortest_and_dpo_train_on_two_processes(lab_models, tmp_path):
    from transformers import AutoModelForCausalLM

    for method in ("shortest", "dpo"):  # dpo reads the samples shortest drew (same settings)
        out = tmp_path / "models" / f"lab-{method}-2p"
        done = _launch(
            [
                "distill",
                method,
                "--model",
                str(lab_models / "lab-long"),
                "--num-problems",
                "48",
                "--max-steps",
                "8",
                "--save-steps",
                "4",
                "--batch-size",
                "4",
                "--out",
                str(out),
            ],  # fmt: skip
            tmp_path,
        )
        assert done.stdout.count(f"wrote {out}") == 1, "only the main process writes the model"
        assert "training on 2 processes: 8 examples per optimiser step" in done.stdout
        (work,) = (tmp_path / "runs" / "distill").glob(f"lab-{method}-2p-*")
        checkpoint = work / "checkpoints" / "checkpoint-8"
        # one random state per process: both trained (a one-process run writes rng_state.pth)
        assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
        # each process took half of each step's 8 examples: an epoch is ceil(examples / 8) steps (48 examples, or
        # the pairs dpo made), not ceil(examples / 4) as on one process
        examples = 48 if method == "shortest" else int(re.search(r"(\d+) pairs from", done.stdout).group(1))
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        assert state["global_step"] == 8 and abs(state["epoch"] - 8 / math.ceil(examples / 8)) < 1e-6
        card = json.loads((out / "card.json").read_text())
        assert card["training"]["steps"] == 8 and card["training"]["processes"] == 2
        assert AutoModelForCausalLM.from_pretrained(out)
    (samples,) = (tmp_path / "runs" / "samples").glob("*.jsonl")
    assert len(samples.read_text().splitlines()) == 48 * 8, "the samples were drawn once"


def test_rl_on_two_processes_gives_what_one_gives_also_when_killed_and_resumed(lab_models, tmp_path):
    """The same run on one process and on two (each sampling half of every iteration's responses on its own engine
    and training on half of every minibatch, DDP summing the gradients), the two-process one killed with SIGKILL
    (the launcher, both processes and their engines) after its first checkpoint and resumed. Samples, rewards and
    validation scores come out identical, losses and weights equal to float rounding (DDP adds the gradients in
    another order than one process does)."""
    from safetensors.torch import load_file

    def args(out: Path) -> list[str]:
        return ["distill", "rl", "--model", str(lab_models / "lab-long"), "--keep-optimizer-state",
                "--iterations", "2", "--problems-per-iteration", "8", "--k", "4", "--max-tokens", "400",
                "--length-warmup-iterations", "0", "--validation-problems", "16", "--validate-every", "1",
                "--resume", "--out", str(out / "lab-rl")]  # fmt: skip

    one, two = tmp_path / "one", tmp_path / "two"
    assert _run(args(one), home=one) == 0
    rng = random.Random(SEED)
    kill = _once(lambda: _count("runs/rl/lab-rl-*/iter-0001/state.json", two), rng.uniform(0, 1))
    at_kills = _run_through_kills(args(two), [kill], lambda: _count("runs/rl/lab-rl-*/iter-*/state.json", two),
                                  home=two, command=LAUNCH)  # fmt: skip
    assert at_kills == [1], f"the kill did not land between the two checkpoints: {at_kills}"

    def logs(home: Path, name: str) -> list[dict]:
        (run,) = (home / "runs" / "rl").glob("lab-rl-*")
        return [json.loads(line) for line in (run / name).read_text().splitlines()]

    exact = ("problems", "accuracy", "mean_length", "mean_length_spread", "mean_reward", "length_weight")
    for first, second in zip(logs(one, "metrics.jsonl"), logs(two, "metrics.jsonl"), strict=True):
        assert {key: first[key] for key in exact} == {key: second[key] for key in exact}
        for key in ("loss", "kl_term", "engine_logprob_gap"):  # (measured: 1e-7 relative, 1e-9 and 1e-7 apart)
            assert second[key] == pytest.approx(first[key], rel=1e-3, abs=1e-5), key
    assert logs(one, "validation.jsonl") == logs(two, "validation.jsonl")
    assert logs(one, "metrics.jsonl")[0]["loss"] > 0, "the first iteration trained (no warm-up)"
    weights, other = load_file(one / "lab-rl" / "model.safetensors"), load_file(two / "lab-rl" / "model.safetensors")
    gap = max((weights[name] - other[name]).abs().max().item() for name in weights)
    assert 0 <= gap < 1e-4, f"weights differ by {gap}"  # (measured: 4e-7)
    card = json.loads((two / "lab-rl" / "card.json").read_text())
    assert card["training"]["iterations"] == 2
    print(f"one vs two processes: largest weight difference {gap:.1e}; checkpoints at the kill: {at_kills}")
