"""Kill each long command with SIGKILL at seeded random moments (its whole process group, engine processes
included, as a preempted node loses them), rerun it each time until it finishes, and require exactly what an
uninterrupted run produces (issue #15): the same samples and results, the same weights bit for bit, the same
model card apart from timestamps and durations."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import write_sum_dataset

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
SEED = 15  # the kill moments are drawn from it, so a failure reproduces

Kill = Callable[[], bool]  # polled while the command runs; true: kill it now


L2S = [sys.executable, "-m", "l2s.cli"]


def _run(
    args: list[str],
    kill: Kill | None = None,
    home: Path | None = None,
    command: list[str] = L2S,
    log: Path | None = None,
) -> int | None:
    """Run `l2s ARGS` (or `command ARGS`) in a process group of its own (with `home` as its L2S_HOME, the lab cache
    off; its output to `log`, if given); when `kill()` turns true, SIGKILL the whole group. Returns the exit status,
    or None if it was killed first."""
    env = {**os.environ, "L2S_CACHE": "off", **({"L2S_HOME": str(home)} if home else {})}
    process = subprocess.Popen(
        [*command, *args], cwd=ROOT, start_new_session=True, env=env,
        stdout=log.open("w") if log else subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 900
    while process.poll() is None and time.monotonic() < deadline:
        if kill is not None and kill():
            _kill_all(process.pid)
            process.wait()
            time.sleep(1)  # let the killed processes (a launcher's workers, engine processes) be reaped
            return None
        time.sleep(0.05)
    assert process.poll() is not None, "the command did not finish in 15 minutes"
    if process.returncode:
        print(process.stderr.read()[-3000:])
    return process.returncode


def _kill_all(pid: int) -> None:
    """SIGKILL a process group and every process below its leader, also those in sessions of their own (torchrun
    starts each worker in a new session): all of them at once, as a lost node loses them."""
    import psutil

    try:
        tree = [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:  # (it ended on its own just now)
        tree = []
    os.killpg(pid, signal.SIGKILL)
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run_through_kills(
    args: list[str], kills: list[Callable[[], Kill]], progress: Callable, home=None, command: list[str] = L2S
) -> list:
    """Run `args` once per kill (each `kills[i]()` makes that attempt's trigger as it starts), then to the end.
    Returns `progress()` as it stood at each kill that landed before the command finished."""
    seen = []
    for make_kill in [*kills, None]:
        status = _run(args, make_kill() if make_kill else None, home, command)
        if status is None:
            seen.append(progress())
            continue
        assert status == 0
        return seen
    raise AssertionError("unreachable")


def _count(pattern: str, directory: Path) -> int:
    return len(list(directory.glob(pattern)))


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def _once(measure: Callable[[], int], then: float) -> Callable[[], Kill]:
    """A kill `then` seconds after `measure()` (lines written, checkpoints saved) first grows in this attempt:
    in the middle of the work, not only during start-up."""

    def make() -> Kill:
        start, seen = measure(), []

        def kill() -> bool:
            if not seen and measure() > start:
                seen.append(time.monotonic())
            return bool(seen) and time.monotonic() > seen[0] + then

        return kill

    return make


def _same_files(first: Path, second: Path, names: list[str]) -> None:
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), f"{name} differs"


def _card_without_times(model_dir: Path) -> dict:
    """The model card apart from when it was made and how long that took (the only fields a kill may change)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "created" and not k.endswith("seconds")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(json.loads((model_dir / "card.json").read_text()))


def test_eval_killed_at_random_moments_gives_the_uninterrupted_results(lab_models, tmp_path):
    def args(out: Path) -> list[str]:
        return ["eval", "--offline", "--model", str(lab_models / "lab-long"), "--num-problems", "20",
                "--samples", "2", "--budgets", "4,16,none", "--max-tokens", "256", "--seed", "3",
                "--out", str(out)]  # fmt: skip

    assert _run(args(tmp_path / "whole")) == 0
    rng = random.Random(SEED)
    killed = tmp_path / "killed"
    log = killed / "samples.jsonl"
    # two kills once samples are being written, then run to the end (a kill while the engine starts finds
    # nothing on disk to lose: it costs CI an engine start and shows nothing more). Samples reach the disk one
    # budget's batch at a time (40 lines), and the two short budgets' batches can both land within half a second
    # of each other: so the budgets run shortest first and each kill comes within 0.1 s of its attempt's first
    # batch, before the next one (the longer budget's) lands.
    kills = [_once(lambda: _lines(log), rng.uniform(0, 0.1)) for _ in range(2)]
    samples_at_kills = _run_through_kills(args(killed), kills, lambda: _lines(log))
    total = 20 * 2 * 3
    assert len(samples_at_kills) == 2, f"only {samples_at_kills} kills landed before the run finished"
    mid_run = [count for count in samples_at_kills if 0 < count < total]
    assert len(set(mid_run)) >= 2, f"fewer than two kills landed at different points mid-run: {samples_at_kills}"
    _same_files(killed, tmp_path / "whole", ["results.json", "report.md"])
    whole = sorted((tmp_path / "whole" / "samples.jsonl").read_text().splitlines())
    assert len(whole) == total and sorted(log.read_text().splitlines()) == whole
    print(f"samples on disk at the kills: {samples_at_kills}")


WEIGHTS = [f"0.{tenth}" for tenth in range(1, 10)]  # nine: a kill 0.1 s after the first lands well before the last


def test_merge_sweep_killed_at_random_moments_gives_the_uninterrupted_models(lab_models, tmp_path):
    """A sweep resumes at the first model it had not finished; each model is published whole or not at all."""

    def args(out: Path) -> list[str]:
        return ["distill", "merge", "--long", str(lab_models / "lab-long"), "--short", str(lab_models / "lab-short"),
                "--sweep", ",".join(WEIGHTS), "--out", str(out / "sweep")]  # fmt: skip

    assert _run(args(tmp_path / "whole")) == 0
    rng = random.Random(SEED + 4)
    killed = tmp_path / "killed"

    def finished() -> int:
        return _count("sweep/sweep-w*/card.json", killed)

    # a model takes 30-70 ms here (after 10 s of start-up): each kill comes within 0.1 s of one being finished (with
    # five models, a run on 2026-12-03 had its first kill land after the fourth)
    at_kills = _run_through_kills(args(killed), [_once(finished, rng.uniform(0, 0.1)) for _ in range(2)], finished)
    assert at_kills and min(at_kills) < len(WEIGHTS), f"no kill landed mid-sweep: {at_kills}"
    for weight in WEIGHTS:
        model = Path("sweep") / f"sweep-w{weight}"
        _same_files(killed / model, tmp_path / "whole" / model, ["model.safetensors"])
        assert _card_without_times(killed / model) == _card_without_times(tmp_path / "whole" / model)
    assert sorted(p.name for p in (killed / "sweep").iterdir()) == [f"sweep-w{w}" for w in WEIGHTS]
    print(f"models finished at the kills: {at_kills}")


TINY_LAB = """\
seed: 0
train_problems: 400
vocab_size: 400
model: {hidden_size: 64, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 128}
base: {steps: 60, batch_size: 8, learning_rate: 0.003, warmup_steps: 5}
long: {steps: 60, batch_size: 8, learning_rate: 0.002, warmup_steps: 5}
short: {steps: 200, batch_size: 8, learning_rate: 0.001, warmup_steps: 5, style: none}
measure: {test_problems: 12, samples: 2, max_tokens: 64}
"""


def test_lab_build_killed_at_random_moments_gives_the_uninterrupted_models(tmp_path):
    """A tiny lab recipe (the real one trains for 14 minutes), checkpointed every 10 steps."""
    recipe = tmp_path / "tiny-lab.yaml"
    recipe.write_text(TINY_LAB)

    def args(out: Path) -> list[str]:
        return ["lab", "build", "--recipe", str(recipe), "--checkpoint-every", "10", "--out", str(out)]

    assert _run(args(tmp_path / "whole")) == 0
    rng = random.Random(SEED + 1)
    killed = tmp_path / "killed"

    def on_disk() -> tuple[int, int]:  # (stages finished, step of the stage in training's checkpoint)
        import torch

        steps = [torch.load(path, weights_only=False)["step"] for path in killed.glob(".lab-*.train-state.pt")]
        return _count("lab-*/card.json", killed), max(steps, default=0)

    def checkpoints_written(stage: str) -> Callable[[], int]:  # grows with each checkpoint of `stage` (replaced)
        def measure() -> int:
            try:
                return sum(path.stat().st_mtime_ns for path in killed.glob(f".{stage}-*.train-state.pt"))
            except FileNotFoundError:  # deleted as its stage finished
                return 0

        return measure

    # one kill in each stage's training, each after a checkpoint so that it resumes from one (a kill while
    # measuring costs a minute of engine starts and tests less: a card has no figures until its model is measured)
    stages = ("lab-base", "lab-long", "lab-short")
    # Each kill comes up to 0.3 s after its stage's first checkpoint (step 10), so every stage must train on for
    # well over that: here base and long take ~0.2 s per 10 steps and short (plain answers) ~0.05 s, so short
    # trains 200 steps (long 60, for margin); at 40 short finished within 0.2 s of its first checkpoint and a CI
    # run's kill came too late.
    kills = [_once(checkpoints_written(stage), rng.uniform(0, 0.3)) for stage in stages]
    at_kills = _run_through_kills(args(killed), kills, on_disk)
    assert [done for done, _ in at_kills] == [0, 1, 2], f"not one kill in each stage's training: {at_kills}"
    for stage in stages:
        _same_files(killed / stage, tmp_path / "whole" / stage, ["model.safetensors", "training_loss.json"])
        assert _card_without_times(killed / stage) == _card_without_times(tmp_path / "whole" / stage), stage
    assert not list(killed.glob(".*")), "checkpoints and temporaries are cleaned up once the build is done"
    print(f"(stages done, checkpoints) at the kills: {at_kills}")


def test_shortest_and_dpo_killed_at_random_moments_give_the_uninterrupted_models(lab_models, tmp_path):
    """Both TRL-trained methods on a user's Hugging Face dataset (a `save_to_disk` directory, no network): kills
    while sampling (shortest) and while training (both), each resumed from the last complete TRL checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, dataset = write_sum_dataset(tmp_path / "data", 48)

    steps = {"shortest": 24, "dpo": 22}  # dpo's ends in mid-epoch (12 steps an epoch), its last checkpoint too

    def args(method: str, out: Path) -> list[str]:
        return ["distill", method, "--model", str(lab_models / "lab-long"), "--task", f"hf:{dataset}",
                "--num-problems", "48", "--max-steps", str(steps[method]), "--save-steps", "4", "--batch-size", "8",
                "--out", str(out / f"lab-{method}")]  # fmt: skip

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    rng = random.Random(SEED + 2)
    samples = killed / "runs" / "samples"
    for method in ("shortest", "dpo"):  # dpo reuses shortest's samples (same settings): its kills are in training
        assert _run(args(method, whole), home=whole) == 0

        def checkpoints(method=method) -> int:  # the step of the last complete TRL checkpoint
            pattern = f"runs/distill/lab-{method}-*/checkpoints/checkpoint-*/trainer_state.json"
            return max((int(path.parent.name.split("-")[1]) for path in killed.glob(pattern)), default=0)

        kills = [_once(checkpoints, rng.uniform(0, 1.0))]  # in training, after a checkpoint
        if method == "shortest":
            kills.insert(0, _once(lambda: sum(_lines(p) for p in samples.glob("*.jsonl")), rng.uniform(0, 2)))
        at_kills = _run_through_kills(args(method, killed), kills, checkpoints, home=killed)
        assert len(at_kills) == len(kills), f"{method}: only {len(at_kills)} kills landed"
        assert max(at_kills) > 0, f"{method}: no kill landed after a checkpoint: {at_kills}"
        model = f"lab-{method}"
        _same_files(killed / model, whole / model, ["model.safetensors"])
        assert _card_without_times(killed / model) == _card_without_times(whole / model)
        card = _card_without_times(killed / model)
        assert AutoModelForCausalLM.from_pretrained(killed / model) and AutoTokenizer.from_pretrained(killed / model)
        assert card["parents"] == ["lab-long"] and card["data"]["problems"] == 48
        assert card["training"]["steps"] == steps[method]
        (loss,) = (killed / "runs" / "distill").glob(f"{model}-*/loss.json")  # the run's own work directory
        (whole_loss,) = (whole / "runs" / "distill").glob(f"{model}-*/loss.json")
        assert json.loads(loss.read_text()) == json.loads(whole_loss.read_text())  # logged losses too
        print(f"{method}: complete checkpoints at the kills: {at_kills}")
    # killed after its last checkpoint, before the model was published (the state its deleted model leaves): resumed
    # there in mid-epoch, the Trainer would train a step past --max-steps (its card: 23 steps; the weights move too
    # where the learning rate has not decayed to 0); the run does its last steps again instead, from checkpoint-20
    (last,) = (killed / "runs" / "distill").glob("lab-dpo-*/checkpoints/checkpoint-22")
    assert json.loads((last / "trainer_state.json").read_text())["epoch"] % 1 != 0
    shutil.rmtree(killed / "lab-dpo")
    assert _run(args("dpo", killed), home=killed) == 0
    _same_files(killed / "lab-dpo", whole / "lab-dpo", ["model.safetensors"])
    assert _card_without_times(killed / "lab-dpo") == _card_without_times(whole / "lab-dpo")
    (killed_samples,) = samples.glob("*.jsonl")
    (whole_samples,) = (whole / "runs" / "samples").glob("*.jsonl")
    assert sorted(killed_samples.read_text().splitlines()) == sorted(whole_samples.read_text().splitlines())
    assert len(whole_samples.read_text().splitlines()) == 48 * 8


def test_rl_killed_at_random_moments_gives_the_uninterrupted_model(lab_models, tmp_path):
    """Two iterations with AdamW's moments carried across them (as the lab recipe does: they are checkpointed
    too); every attempt is started with --resume. Also the same-seed determinism check."""

    def args(out: Path) -> list[str]:
        return ["distill", "rl", "--model", str(lab_models / "lab-long"), "--keep-optimizer-state",
                "--iterations", "2", "--problems-per-iteration", "6", "--k", "4", "--max-tokens", "400",
                "--length-warmup-iterations", "1", "--validation-problems", "24", "--validate-every", "1",
                "--resume", "--out", str(out / "lab-rl")]  # fmt: skip

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _run(args(whole), home=whole) == 0
    rng = random.Random(SEED + 3)

    def progress() -> tuple[int, int]:  # (complete checkpoints, validation scores)
        (run,) = (killed / "runs" / "rl").glob("lab-rl-*") or [killed]
        return _count("iter-*/state.json", run), _lines(run / "validation.jsonl")

    def started() -> int:  # the run directory exists once the engine is up and iteration 1 begins
        return _count("runs/rl/lab-rl-*/.lock", killed)

    # during iteration 1, then after checkpoint 1 (during iteration 2 or its validation)
    kills = [_once(started, rng.uniform(5, 20)), _once(lambda: progress()[0], rng.uniform(0, 8))]
    at_kills = _run_through_kills(args(killed), kills, progress, home=killed)
    assert len(at_kills) >= 2 and len(set(at_kills)) >= 2, f"kills did not land at distinct points: {at_kills}"
    (whole_run,) = (whole / "runs" / "rl").glob("lab-rl-*")
    (killed_run,) = (killed / "runs" / "rl").glob("lab-rl-*")
    for iteration in ("iter-0001", "iter-0002"):
        _same_files(killed_run / iteration, whole_run / iteration, ["model.safetensors"])  # bit for bit
    _same_files(killed / "lab-rl", whole / "lab-rl", ["model.safetensors"])
    assert _card_without_times(killed / "lab-rl") == _card_without_times(whole / "lab-rl")
    training = _card_without_times(killed / "lab-rl")["training"]
    assert [v["iteration"] for v in training["validation"]] == [0, 1, 2]
    print(f"(checkpoints, validation scores) at the kills: {at_kills}")
