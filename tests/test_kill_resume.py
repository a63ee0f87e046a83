"""Kill a long command with SIGKILL at seeded random moments (its whole process group, engine processes
included, as a preempted node loses them), rerun it each time until it finishes, and require exactly what an
uninterrupted run produces (issue #15)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
SEED = 15  # the kill moments are drawn from it, so a failure reproduces


def _run(args: list[str], kill=None) -> int | None:
    """Run `l2s ARGS` in a process group of its own; when `kill()` turns true, SIGKILL the whole group. Returns
    the exit status, or None if it was killed before it finished."""
    process = subprocess.Popen(
        [sys.executable, "-m", "l2s.cli", *args], cwd=ROOT, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 900
    while process.poll() is None and time.monotonic() < deadline:
        if kill is not None and kill():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            time.sleep(1)  # let the killed engine processes be reaped
            return None
        time.sleep(0.05)
    assert process.poll() is not None, "the command did not finish in 15 minutes"
    return process.returncode


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def _after_seconds(seconds: float):
    end = time.monotonic() + seconds
    return lambda: time.monotonic() > end


def _once_it_writes(log: Path, then: float):
    """True `then` seconds after `log` has grown (a kill in the middle of the work, not only during start-up)."""
    start, seen = _lines(log), []

    def kill() -> bool:
        if not seen and _lines(log) > start:
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() > seen[0] + then

    return kill


def test_eval_killed_at_random_moments_gives_the_uninterrupted_results(lab_models, tmp_path):
    def args(out: Path) -> list[str]:
        return ["eval", "--offline", "--model", str(lab_models / "lab-long"), "--num-problems", "30",
                "--samples", "2", "--budgets", "none,16,4", "--max-tokens", "256", "--seed", "3",
                "--out", str(out)]  # fmt: skip

    assert _run(args(tmp_path / "whole")) == 0
    rng = random.Random(SEED)
    killed = tmp_path / "killed"
    log = killed / "samples.jsonl"
    # one kill while the engine starts, then three once samples are being written, then run to the end
    moments = [rng.uniform(3, 20)] + [rng.uniform(0, 0.5) for _ in range(3)]
    samples_at_kills = []  # how many samples were on disk at each kill
    for attempt, moment in enumerate([*moments, None]):
        kill = None if moment is None else _after_seconds(moment) if attempt == 0 else _once_it_writes(log, moment)
        status = _run(args(killed), kill)
        if status is None:
            samples_at_kills.append(_lines(log))
            continue
        assert status == 0
        break
    total = 30 * 2 * 3
    assert len(samples_at_kills) >= 3, f"only {samples_at_kills} kills landed before the run finished"
    mid_run = [count for count in samples_at_kills if 0 < count < total]
    assert len(set(mid_run)) >= 2, f"fewer than two kills landed at different points mid-run: {samples_at_kills}"
    assert (killed / "results.json").read_bytes() == (tmp_path / "whole" / "results.json").read_bytes()
    assert (killed / "report.md").read_text() == (tmp_path / "whole" / "report.md").read_text()
    whole = sorted((tmp_path / "whole" / "samples.jsonl").read_text().splitlines())
    assert len(whole) == total and sorted((killed / "samples.jsonl").read_text().splitlines()) == whole
    print(f"samples on disk at the kills: {samples_at_kills}")
