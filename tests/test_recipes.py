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
    kind = next((k for k in KINDS if k in path.stem.split("-")), None)
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


@pytest.mark.parametrize("path", sorted(Path("configs/accelerate").glob("*.yaml")), ids=lambda path: path.name)
def test_shipped_accelerate_configs_load_and_name_only_known_settings(path):
    """Each file in configs/accelerate loads as accelerate's own config (which refuses unknown top-level keys),
    and every key of its fsdp_config / deepspeed_config is one of `accelerate launch`'s settings (those it does not
    check itself). RL's FSDP settings are the ones distill/sharding.py reads or refuses."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(path))
    settings = {action.dest for action in launch_command_parser()._actions}
    for section in (config.fsdp_config, config.deepspeed_config):
        assert set(section) <= settings, set(section) - settings
    assert config.mixed_precision == "no"  # RL refuses accelerate's mixed precision
    assert config.num_processes % config.num_machines == 0
    if config.fsdp_config:
        assert config.fsdp_config["fsdp_version"] == 2
        assert not config.fsdp_config["fsdp_offload_params"] and not config.fsdp_config["fsdp_activation_checkpointing"]


def test_report_to_names_installed_trackers_only(monkeypatch):
    """`--report-to tensorboard,wandb` parses into the recipe; a tracker that is not installed, or unknown, is
    refused when the recipe loads (not dropped at the first log)."""
    import importlib.util

    parser = argparse.ArgumentParser()
    add_recipe_flags(parser, RLRecipe)
    overrides = recipe_overrides(parser.parse_args(["--model", "m", "--report-to", "tensorboard"]), RLRecipe)
    assert RLRecipe.load(None, overrides).report_to == ["tensorboard"]
    with pytest.raises(RecipeError, match="literal_error|Input should be"):
        RLRecipe.load(None, {"model": "m", "report_to": ["neptune"]})
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else found(name))
    with pytest.raises(RecipeError, match="the wandb package is not installed"):
        ShortestRecipe.load(None, {"model": "m", "report_to": ["wandb"]})
