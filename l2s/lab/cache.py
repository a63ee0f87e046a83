"""The lab's models, cached outside the checkout by recipe hash (as the Hugging Face cache keeps hub models).

    ${L2S_CACHE:-~/.cache/long2short}/lab/<recipe hash>/{lab-base,lab-long,lab-short}

A fresh clone on a machine that has built the same recipe before copies the finished models (seconds) instead
of training them again (about 14 minutes on 2 cores). The key is the whole lab recipe, seed included, as for
the per-stage cache in the output directory. `L2S_CACHE=off` turns it off.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from l2s.cards import atomic_model_dir, read_card, stable_hash

STAGES = ("lab-base", "lab-long", "lab-short")


def cache_dir(recipe: dict) -> Path | None:
    root = os.environ.get("L2S_CACHE", str(Path.home() / ".cache" / "long2short"))
    if root.lower() == "off":
        return None
    return Path(root).expanduser() / "lab" / stable_hash(recipe)


def restore(recipe: dict, out: Path) -> list[str]:
    """Copy every cached stage whose output directory is missing or holds another recipe's model."""
    cache = cache_dir(recipe)
    if cache is None:
        return []
    restored = []
    for name in STAGES:
        cached, present = read_card(cache / name), read_card(out / name)
        if cached and (not present or present.get("recipe_hash") != cached.get("recipe_hash")):
            _copy(cache / name, out / name)
            restored.append(name)
    return restored


def store(recipe: dict, out: Path) -> None:
    """Copy the finished (and measured) stages into the cache, where they differ from what it holds."""
    cache = cache_dir(recipe)
    if cache is None:
        return
    for name in STAGES:
        card = read_card(out / name)
        if card and card != read_card(cache / name):
            _copy(out / name, cache / name)


def _copy(source: Path, destination: Path) -> None:
    with atomic_model_dir(destination) as temporary:
        shutil.copytree(source, temporary, dirs_exist_ok=True)
