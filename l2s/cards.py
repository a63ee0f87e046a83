"""Model cards (`card.json`) and model directories.

A model is a Hugging Face directory (config.json, model.safetensors, tokenizer files with a chat template)
plus `card.json`: how it was made (method, parents, recipe, data hash, code version) and, once measured, how
it scores. Every part of the product reads and writes this one format.

Directories are written under a temporary name and renamed when complete (`atomic_model_dir`), so a
directory with a `card.json` is always a finished model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from l2s.adapters import is_adapter
from l2s.atomic import left_by_dead_process, publish_dir, write_text_atomic
from l2s.jsonl import read_json

logger = logging.getLogger("l2s")
CARD_FILE = "card.json"
TEMP_PREFIX = ".tmp-"


def code_version() -> str:
    """The git commit of this checkout (with `+dirty` when it has changes), or the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("long2short")
        except PackageNotFoundError:
            return "unknown"


def stable_hash(value: Any) -> str:
    """A short hash of a JSON-serialisable value (recipes, data sets), stable across runs."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_card(model_dir: str | Path) -> dict | None:
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        return None
    return read_json(path, "model card")  # (a corrupt card is a one-line error naming it, not a traceback)


def write_card(model_dir: str | Path, card: dict) -> None:
    write_text_atomic(Path(model_dir) / CARD_FILE, json.dumps(card, indent=2, sort_keys=False) + "\n")


def update_card(model_dir: str | Path, **fields: Any) -> dict:
    card = read_card(model_dir) or {}
    card.update(fields)
    write_card(model_dir, card)
    return card


def new_card(name: str, method: str, parents: list[str], recipe: dict, **extra: Any) -> dict:
    return {
        "name": name,
        "method": method,
        "parents": parents,
        "recipe": recipe,
        "recipe_hash": stable_hash(recipe),
        "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }


def is_model_dir(path: Path) -> bool:
    """A finished model or LoRA adapter: one of ours (its card is written last, inside an atomic rename), or a
    Hugging Face directory from elsewhere (a downloaded checkpoint, a peft adapter) whose weights are all there."""
    if not path.is_dir() or path.name.startswith("."):
        return False
    if is_adapter(path):
        return (path / CARD_FILE).is_file() or (path / "adapter_model.safetensors").is_file()
    if not (path / "config.json").is_file():
        return False
    return (path / CARD_FILE).is_file() or _has_all_weights(path)


def _has_all_weights(path: Path) -> bool:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError):
            return False
        return all((path / shard).is_file() for shard in shards)
    return (path / "model.safetensors").is_file() or (path / "pytorch_model.bin").is_file()


def find_models(models_dir: str | Path) -> dict[str, Path]:
    """Finished models in `models_dir`, by name (temporary and hidden directories are skipped)."""
    root = Path(models_dir)
    if not root.is_dir():
        return {}
    return {path.name: path for path in sorted(root.iterdir()) if is_model_dir(path)}


@contextlib.contextmanager
def atomic_model_dir(final_dir: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `final_dir`; rename it to `final_dir` when the block ends
    without an error. A failed or interrupted write leaves only a `.tmp-*` directory, never a model."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(final_dir)
    temporary = final_dir.parent / f"{TEMP_PREFIX}{final_dir.name}-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    publish_dir(temporary, final_dir)  # synced, then swapped with any old model in one step


def _remove_leftovers(final_dir: Path) -> None:
    """Delete what killed writes of `final_dir` left (`.tmp-NAME-PID`, `.old-NAME-PID` of a process that is
    gone); a live process's are its own business."""
    for prefix in (TEMP_PREFIX, ".old-"):
        for leftover in final_dir.parent.glob(f"{prefix}{final_dir.name}-*"):
            if left_by_dead_process(leftover.name.rsplit("-", 1)[-1]):
                logger.warning("removing %s, left by an interrupted run", leftover)
                shutil.rmtree(leftover, ignore_errors=True)
