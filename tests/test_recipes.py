"""Recipes: every committed recipe validates, and the command-line flags are made from the recipe fields."""

import argparse
from pathlib import Path

import pytest

from distill.dpo import DPORecipe
from distill.recipe import RecipeError
from distill.rl import RLRecipe
from distill.shortest import ShortestRecipe
from l2s.flags import add_recipe_flags, recipe_overrides

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
KINDS = {"rl": RLRecipe, "shortest": ShortestRecipe, "dpo": DPORecipe}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("distill/*.yaml")) + sorted(CONFIGS.glob("byo/*.yaml")))
def test_committed_recipes_validate(path):
    kind = next((k for k in KINDS if path.stem.endswith(k)), None)
    if kind is None:
        pytest.skip(f"{path.name}: not a sampling method's recipe")
    KINDS[kind].load(path)


def test_flags_come_from_the_fields():
    parser = argparse.ArgumentParser()
    add_recipe_flags(parser, RLRecipe)
    args = parser.parse_args(
        ["--task", "jsonl:x.jsonl", "--no-curriculum", "--micro-batch-size", "4", "--engine-dtype", "bfloat16"]
    )
    overrides = recipe_overrides(args, RLRecipe)
    assert overrides == {
        "task": "jsonl:x.jsonl",
        "curriculum": False,
        "micro_batch_size": 4,
        "engine": {"dtype": "bfloat16"},
    }
    recipe = RLRecipe.load(CONFIGS / "byo" / "r1-distill-1.5b-rl.yaml", overrides)
    # a nested flag overrides one setting of the file's section, not the whole section
    assert recipe.engine.dtype == "bfloat16" and recipe.engine.max_model_len == 4608
    assert recipe.curriculum is False and recipe.task == "jsonl:x.jsonl"
    assert "--beta" not in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--baseline", "median"])  # choices from the Literal


def test_bad_task_spec_fails_at_load():
    with pytest.raises(RecipeError, match="unknown task"):
        ShortestRecipe.load(None, {"model": "m", "task": "gsm8k"})


def test_working_state_lives_under_l2s_home(tmp_path, monkeypatch):
    from distill.sampling import SampleSettings, cache_path
    from l2s.registry import register_variant, registered_variants

    monkeypatch.setenv("L2S_HOME", str(tmp_path / "home"))
    register_variant("mine", tmp_path)
    assert (tmp_path / "home" / "registered_variants.yaml").is_file()
    assert registered_variants() == {"mine": str(tmp_path.resolve())}
    assert cache_path(tmp_path, [], SampleSettings()).parent == tmp_path / "home" / "runs" / "samples"
