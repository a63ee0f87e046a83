"""Where long2short keeps its working state: one directory, `$L2S_HOME` (default: the current directory), never
the installed package's own files.

    $L2S_HOME/runs/samples              distill sampling's cached samples (resumable)
    $L2S_HOME/runs/distill              TRL checkpoints of shortest and dpo (resumable)
    $L2S_HOME/runs/rl                   RL runs: checkpoints, metrics, validation scores
    $L2S_HOME/registered_variants.yaml  models `l2s distill ... --register` adds for `l2s serve`
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("L2S_HOME") or ".")


def runs_dir(kind: str) -> Path:
    return home() / "runs" / kind


def registry_path() -> Path:
    return home() / "registered_variants.yaml"
