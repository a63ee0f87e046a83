"""Where long2short keeps its working state: one directory, `$L2S_HOME` (default: the current directory), never
the installed package's own files.

    $L2S_HOME/runs/samples              distill sampling's cached samples (resumable)
    $L2S_HOME/runs/distill              TRL checkpoints of shortest and dpo (resumable)
    $L2S_HOME/runs/rl                   RL runs: checkpoints, metrics, validation scores
    $L2S_HOME/registered_variants.yaml  models `l2s distill ... --register` adds for `l2s serve`
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from l2s.atomic import file_lock
from l2s.cards import stable_hash


def home() -> Path:
    return Path(os.environ.get("L2S_HOME") or ".")


def runs_dir(kind: str) -> Path:
    return home() / "runs" / kind


def registry_path() -> Path:
    return home() / "registered_variants.yaml"


def run_dir_for(kind: str, out: str | Path, *identity) -> Path:
    """A run's working directory: named by its output's name, and keyed on the output's absolute path (two
    outputs of the same name in different places never share one) and on whatever else must match to resume."""
    out = Path(out)
    return runs_dir(kind) / f"{out.name}-{stable_hash([str(out.resolve()), *identity])[:12]}"


@contextlib.contextmanager
def exclusive(run_dir: Path) -> Iterator[Path]:
    """Hold `run_dir` for one run: a second run on it, while the first is alive, is refused at once."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(file_lock(run_dir / ".lock", wait=False))
        except BlockingIOError:
            raise SystemExit(f"{run_dir} is in use by another run (wait for it, or give another output)") from None
        yield run_dir  # (an error of the run itself passes through as it is)
