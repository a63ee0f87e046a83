"""The lab cache outside the checkout: a finished build is copied in and restored by recipe hash."""

from __future__ import annotations

import json

from l2s.cards import read_card, write_card
from l2s.lab import cache


def _fake_stage(directory, recipe_hash):
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    write_card(directory, {"name": directory.name, "recipe_hash": recipe_hash})


def test_store_then_restore_by_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("L2S_CACHE", str(tmp_path / "cache"))
    recipe, other = {"seed": 0}, {"seed": 1}
    built = tmp_path / "built"
    for name in cache.STAGES:
        _fake_stage(built / name, "h0")
    cache.store(recipe, built)
    fresh = tmp_path / "fresh"
    assert cache.restore(recipe, fresh) == list(cache.STAGES)
    assert read_card(fresh / "lab-long") == read_card(built / "lab-long")
    assert cache.restore(recipe, fresh) == []  # already there
    assert cache.restore(other, tmp_path / "elsewhere") == []  # another recipe: nothing cached
    monkeypatch.setenv("L2S_CACHE", "off")
    assert cache.cache_dir(recipe) is None and cache.restore(recipe, tmp_path / "off") == []
