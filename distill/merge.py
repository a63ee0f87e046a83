"""`l2s distill merge`: average a long-CoT and a short-CoT model's weights (k1.5 §2.4 model merging) with
mergekit's Python API: a validated `MergeConfiguration` and `run_merge`.

`linear` with weight 0.5 is the paper's plain average. `ties`, `dare_ties` and `task_arithmetic` merge the two
fine-tunes as task vectors over their shared ancestor (read from the cards, or `--base`); `slerp` interpolates
spherically with `t` = 1 − weight. `--sweep` writes one model per weight of the long model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from distill.lora import full_weights
from distill.recipe import Recipe
from l2s.cards import atomic_model_dir, new_card, read_card, stable_hash, write_card

METHODS = ("linear", "ties", "dare_ties", "slerp", "task_arithmetic")


class MergeRecipe(Recipe):
    long: str
    short: str
    method: Literal["linear", "ties", "dare_ties", "slerp", "task_arithmetic"] = "linear"
    weight: float = Field(0.5, ge=0, le=1, description="weight of the long model")
    sweep: list[float] | None = None
    base: str | None = Field(None, description="shared ancestor for ties/dare_ties/task_arithmetic/slerp")
    density: float = Field(0.5, gt=0, le=1, description="ties / dare_ties: share of each task vector kept")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    seed: int = 0


def shared_ancestor(long: str, short: str) -> str | None:
    """The parent the two models' cards have in common, as a path beside the long model."""
    long_parents = (read_card(long) or {}).get("parents") or []
    short_parents = set((read_card(short) or {}).get("parents") or [])
    for parent in long_parents:
        if parent in short_parents and (Path(long).parent / parent / "config.json").is_file():
            return str(Path(long).parent / parent)
    return None


def merge_configuration(recipe: MergeRecipe, weight: float) -> dict:
    """The mergekit configuration (as a dict) for one weight of the long model. A LoRA adapter takes part as its
    base with the adapter merged in."""
    long, short = (str(Path(full_weights(model)).resolve()) for model in (recipe.long, recipe.short))
    base = recipe.base or shared_ancestor(recipe.long, recipe.short)
    config: dict = {"merge_method": recipe.method, "dtype": recipe.dtype}
    if recipe.method == "linear":
        config["models"] = [
            {"model": long, "parameters": {"weight": weight}},
            {"model": short, "parameters": {"weight": 1 - weight}},
        ]
        return config
    if base is None:
        raise ValueError(
            f"merge method {recipe.method} needs the shared ancestor: give --base (no common parent in the cards)"
        )
    base = str(Path(base).resolve())
    if recipe.method == "slerp":
        config.update(base_model=long, models=[{"model": long}, {"model": short}], parameters={"t": 1 - weight})
        return config
    parameters = {"weight": weight}, {"weight": 1 - weight}
    if recipe.method in ("ties", "dare_ties"):
        for block in parameters:
            block["density"] = recipe.density
    config.update(
        base_model=base,
        models=[{"model": long, "parameters": parameters[0]}, {"model": short, "parameters": parameters[1]}],
    )
    if recipe.method in ("ties", "dare_ties", "task_arithmetic"):
        config["parameters"] = {"normalize": False}
    return config


def merge_one(recipe: MergeRecipe, weight: float, out_dir: Path) -> Path:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    raw = merge_configuration(recipe, weight)
    configuration = MergeConfiguration.model_validate(raw)  # validated before any weights load
    card_recipe = {**recipe.model_dump(), "weight": weight, "mergekit": raw}
    data_hash = stable_hash([read_card(recipe.long) or {}, read_card(recipe.short) or {}])
    done = read_card(out_dir) or {}
    if done.get("recipe_hash") == stable_hash(card_recipe) and done.get("data_hash") == data_hash:
        # merging is deterministic: the same recipe on the same parents gives these very weights (a sweep that
        # was interrupted resumes at the first model it had not finished)
        print(f"{out_dir}: already merged from this recipe and these parents, kept")
        return out_dir
    started = time.time()
    with atomic_model_dir(out_dir) as temporary:
        run_merge(
            configuration,
            str(temporary),
            MergeOptions(
                copy_tokenizer=True, random_seed=recipe.seed, quiet=True, write_model_card=False, lazy_unpickle=False
            ),
        )
        parents = [Path(recipe.long).name, Path(recipe.short).name]
        card = new_card(
            name=out_dir.name,
            method=f"merge-{recipe.method}",
            parents=parents,
            recipe=card_recipe,
            role="short",
            data_hash=data_hash,
            merge={"weight_long": weight, "seconds": round(time.time() - started, 2)},
        )
        write_card(temporary, card)
    print(f"merged {recipe.method} (long weight {weight}) -> {out_dir}")
    return out_dir


def run(recipe: MergeRecipe, out: Path) -> list[Path]:
    if recipe.sweep:
        return [merge_one(recipe, weight, out / f"{out.name}-w{weight:g}") for weight in recipe.sweep]
    return [merge_one(recipe, recipe.weight, out)]
