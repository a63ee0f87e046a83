"""Nothing lost (issue #15), without engines: append-only logs cut off by a kill are repaired, corrupt files are
named with their line, a replaced model is swapped in whole, leftovers of killed writers are cleaned, concurrent
writers do not lose each other's work, and a run directory has one owner at a time."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distill.sampling import problem_seed
from distill.training import resume_point
from l2s.atomic import publish_dir, write_text_atomic
from l2s.cards import atomic_model_dir, read_card
from l2s.home import exclusive
from l2s.jsonl import CorruptFile, read_json, read_log
from l2s.registry import register_variant, registered_variants
from server.budgets import Calibration

ROOT = Path(__file__).resolve().parent.parent


def test_a_cut_off_last_line_is_dropped_and_never_fuses_with_the_next_record(tmp_path, caplog):
    log = tmp_path / "samples.jsonl"
    log.write_text('{"a": 1}\n{"a": 2}\n{"a": ')  # killed in the middle of the third write
    assert read_log(log) == [{"a": 1}, {"a": 2}]
    assert log.read_text() == '{"a": 1}\n{"a": 2}\n' and "cut-off last line" in caplog.text
    with log.open("a") as out:  # what a resumed run appends
        out.write('{"a": 3}\n')
    assert read_log(log) == [{"a": 1}, {"a": 2}, {"a": 3}]


def test_a_corrupt_line_is_named(tmp_path):
    log = tmp_path / "samples.jsonl"
    log.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(CorruptFile, match=r"samples.jsonl:2: not a JSON record"):
        read_log(log)
    log.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(CorruptFile, match=r"samples.jsonl:2: not a JSON object"):
        read_log(log)


def test_eval_resume_reads_through_the_repair(tmp_path):
    from eval.runner import load_done

    log = tmp_path / "samples.jsonl"
    record = {"model": "m", "model_version": "v", "condition": "c", "problem_id": "p", "sample": 0}
    log.write_text(json.dumps(record) + "\n" + json.dumps(record | {"sample": 1})[:20])
    assert len(load_done(log)) == 1
    log.write_text(json.dumps({"unrelated": 1}) + "\n")
    with pytest.raises(CorruptFile, match="samples.jsonl:1: not an eval sample"):
        load_done(log)


@pytest.mark.parametrize(
    "text, says",
    [
        ('{"variants": {"lab-long": {"efforts": {"low": 1', "calibration.json:1: not a valid JSON calibration"),
        ("[]", "not a JSON object"),
        ('{"variants": {"lab-long": {"budgets": [{"budget": 1}]}}}', "not a calibration from"),
    ],
)
def test_a_corrupt_calibration_is_one_clear_line(tmp_path, text, says):
    path = tmp_path / "calibration.json"
    path.write_text(text)
    with pytest.raises(CorruptFile, match=says):
        Calibration.load(path)


def test_serve_with_a_truncated_calibration_says_which_file(tmp_path, lab_models):
    path = tmp_path / "calibration.json"
    path.write_text('{"variants": {')
    result = subprocess.run(
        [sys.executable, "-m", "l2s.cli", "serve", "--models-dir", str(lab_models), "--calibration", str(path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"l2s: error: {path}:1: not a valid JSON calibration" in result.stderr


def test_a_corrupt_registry_names_its_line(tmp_path):
    registry = tmp_path / "registered_variants.yaml"
    registry.write_text("variants:\n  a: /x\n  b: [unclosed\n")
    with pytest.raises(CorruptFile, match=r"registered_variants.yaml:\d+: not valid YAML, so not a variant registry"):
        registered_variants(registry)
    with pytest.raises(CorruptFile, match=r"json file"):
        read_json(tmp_path / "missing.json", "json file")


def _load_distill_recipe(path: Path):
    from distill.recipe import RecipeError
    from distill.shortest import ShortestRecipe

    try:
        return ShortestRecipe.load(path)
    except RecipeError as error:
        raise CorruptFile(str(error)) from None  # (the distill CLI prints a RecipeError as it is, one line)


def _load_lab_recipe(path: Path):
    from l2s.lab.build import LabRecipe

    return LabRecipe.load(path)


def _load_server_config(path: Path):
    from server.config import ServerConfig

    return ServerConfig.load(path, None)


def _load_card(path: Path):
    return read_card(path.parent)


@pytest.mark.parametrize(
    "load, name, text, says",
    [
        (
            _load_distill_recipe,
            "rl.yaml",
            "model: models/lab-long\nk: [8,\n",
            r"rl.yaml:3: not valid YAML, so not a recipe",
        ),
        (_load_distill_recipe, "rl.yaml", "- model\n", r"rl.yaml: not a mapping of settings"),
        (_load_lab_recipe, "lab.yaml", "seed: 0\nbase: {steps: 10\n", r"lab.yaml:3: not valid YAML, so not a lab"),
        (_load_lab_recipe, "lab.yaml", "seed: 0\n", r"lab.yaml: not a valid lab recipe"),
        (_load_server_config, "server.yaml", "variants:\n  - {name: a\n", r"server.yaml:3: not valid YAML"),
        (_load_server_config, "server.yaml", "variants: [{name: a}]\n", r"server.yaml: not a valid server config"),
        (_load_server_config, "server.yaml", "defaults: 5\n", r"server.yaml: `defaults` is not a mapping"),
        (_load_server_config, "server.yaml", "variants: [{name: a, path: /x}, {name: a, path: /y}]\n", "repeat"),
        (_load_card, "card.json", '{"name": "lab-rl", "meth', r"card.json:1: not a valid JSON model card"),
        (_load_card, "card.json", "\xff\xfe", r"card.json: .*model card"),
    ],
)
def test_a_truncated_or_corrupt_recipe_config_or_card_is_one_clear_line(tmp_path, load, name, text, says):
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(CorruptFile, match=says) as raised:
        load(path)
    assert str(raised.value).startswith(str(path))


def test_damaged_rl_and_lab_checkpoints_are_skipped_with_a_warning(tmp_path, caplog):
    import random

    import torch

    from distill.rl import RunState, last_checkpoint, write_state
    from l2s.lab.train import _load_checkpoint

    for iteration, state in ((1, None), (2, "{}"), (3, '{"iteration": 2, "hist'), (4, "")):  # 4: killed first
        checkpoint = tmp_path / f"iter-{iteration:04d}"
        checkpoint.mkdir()
        if state is None:
            write_state(checkpoint, RunState(iteration=1), random.Random(0))
        elif state:
            (checkpoint / "state.json").write_text(state)
    assert last_checkpoint(tmp_path) == tmp_path / "iter-0001"
    assert all(f"iter-000{n}" in caplog.text for n in (2, 3, 4))

    model = torch.nn.Linear(2, 2)
    saved = tmp_path / ".lab-base-0123.train-state.pt"
    state = {"step": 10, "model": model.state_dict(), "optimizer": {}, "rng": random.Random(0).getstate(),
             "torch_rng": torch.get_rng_state(), "order": [1, 0], "pending": [], "losses": [1.0]}  # fmt: skip
    torch.save(state, saved)
    assert _load_checkpoint(saved, model)["step"] == 10
    assert _load_checkpoint(saved, torch.nn.Linear(2, 3)) is None  # another model's: skipped, nothing restored
    saved.write_bytes(saved.read_bytes()[:200])  # damaged after the fact
    assert _load_checkpoint(saved, model) is None and f"skipping {saved}" in caplog.text


def _register(args: tuple[str, str]) -> None:
    registry, name = args
    register_variant(name, Path("/models") / name, Path(registry))


def test_concurrent_registrations_all_land(tmp_path):
    registry = tmp_path / "registered_variants.yaml"
    names = [f"variant-{i}" for i in range(12)]
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        pool.map(_register, [(str(registry), name) for name in names])
    assert sorted(registered_variants(registry)) == sorted(names)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file is left behind"


def test_replacing_a_model_swaps_it_whole_and_cleans_up_after_killed_writers(tmp_path):
    final = tmp_path / "lab-short"
    for version in ("old", "new"):
        with atomic_model_dir(final) as temporary:
            (temporary / "weights").write_text(version)
            (temporary / "card.json").write_text("{}")
    assert (final / "weights").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["lab-short"]

    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid that no longer runs
    dead.wait()
    for leftover in (f".tmp-lab-short-{dead.pid}", f".old-lab-short-{dead.pid}"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "card.json").write_text("{}")  # half-written, yet looks finished
    with atomic_model_dir(final) as temporary:
        (temporary / "weights").write_text("newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab-short"]

    # publishing over a directory keeps one complete version at every instant: the swap is one rename
    fresh = tmp_path / ".staging"
    fresh.mkdir()
    (fresh / "weights").write_text("newest")
    publish_dir(fresh, final)
    assert (final / "weights").read_text() == "newest" and not fresh.exists()


def test_a_file_write_cleans_up_after_killed_writers_of_that_file(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".results.tmp-{dead.pid}-1.json").write_text('{"half')  # a killed write of results.json
    (tmp_path / f".results.tmp-{os.getpid()}-99.json").write_text("")  # a live writer's: its own business
    (tmp_path / f".report.tmp-{dead.pid}-1.md").write_text("")  # another file's: cleaned when that is written
    write_text_atomic(tmp_path / "results.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["results.json", f".results.tmp-{os.getpid()}-99.json", f".report.tmp-{dead.pid}-1.md"]
    )


def test_incomplete_trainer_checkpoints_are_skipped(tmp_path, caplog):
    for step, complete in ((10, True), (20, True), (30, False)):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "model.safetensors").write_text("w")
        if complete:
            (checkpoint / "trainer_state.json").write_text("{}")
    assert resume_point(tmp_path) == tmp_path / "checkpoint-20"  # (states without max_steps: not a last one)
    assert "checkpoint-30" in caplog.text and "incomplete" in caplog.text
    assert resume_point(tmp_path / "nothing-here") is None


def test_a_run_killed_after_its_last_checkpoint_resumes_from_the_one_before(tmp_path):
    """The Trainer, resumed at max_steps in mid-epoch, would train a step past it (tests/test_kill_resume.py)."""
    for step in (4, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step,
                                                                                         "max_steps": 8}))  # fmt: skip
    assert resume_point(tmp_path) == tmp_path / "checkpoint-4"
    shutil.rmtree(tmp_path / "checkpoint-4")
    assert resume_point(tmp_path) is None  # (from the start)


def _hold(run_dir: str, ready, release) -> None:
    with exclusive(Path(run_dir)):
        ready.set()
        release.wait(30)


def test_a_run_directory_has_one_owner_at_a_time(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(SystemExit, match="in use by another run"):
            with exclusive(tmp_path):
                pass
    finally:
        release.set()
        holder.join(30)
    with exclusive(tmp_path):  # free again once its holder is gone
        pass


def test_sample_seeds_come_from_the_problem_not_its_position():
    assert problem_seed(0, "lab-3-17") == problem_seed(0, "lab-3-17")
    assert len({problem_seed(0, f"p{i}") for i in range(100)}) == 100
    assert problem_seed(1, "p0") != problem_seed(0, "p0")


def test_a_sample_group_cut_short_is_redrawn_whole(tmp_path):
    from dataclasses import asdict

    from distill.sampling import Sample, _load

    def sample(problem: str, index: int, text: str) -> str:
        record = Sample(problem, index, text, [1], 1, 1, True, True)
        return json.dumps(asdict(record)) + "\n"

    cache = tmp_path / "samples.jsonl"
    # problem b: killed after 1 of its 2 samples; the rerun appended the whole group again
    cache.write_text(sample("a", 0, "a0") + sample("a", 1, "a1") + sample("b", 0, "old") + sample("b", 0, "b0")
                     + sample("b", 1, "b1"))  # fmt: skip
    groups = _load(cache)
    assert [s.completion for s in groups["a"]] == ["a0", "a1"]
    assert [s.completion for s in groups["b"]] == ["b0", "b1"]


def test_a_corrupt_eval_arguments_file_is_one_clear_line(tmp_path, lab_models):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "arguments.json").write_text('{"task": "lab", "num_')  # a run killed while it wrote them (before this fix)
    result = subprocess.run(
        [sys.executable, "-m", "l2s.cli", "eval", "--offline", "--model", str(lab_models / "lab-long"),
         "--num-problems", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"{out / 'arguments.json'}:1: not a valid JSON eval arguments file" in result.stderr


def test_figures_are_written_whole(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from l2s.atomic import save_figure_atomic

    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])
    save_figure_atomic(figure, tmp_path / "plot.png", dpi=50)
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG") and [p.name for p in tmp_path.iterdir()] == [
        "plot.png"
    ]
