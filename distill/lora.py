"""LoRA variants: `--lora` trains a peft low-rank adapter of the starting model instead of all its weights.

The output is a peft adapter directory (`adapter_config.json`, `adapter_model.safetensors`) with the tokenizer
and `card.json`, written atomically like every model directory; `l2s serve` hosts it on its base's engine and
`l2s eval` runs it on the base's (l2s/adapters.py). `--merge-adapter` writes the merged full model instead, for
engines without LoRA.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from l2s.adapters import write_base_reference
from l2s.models import looks_like_hub_id


class LoraRecipe(BaseModel):
    """The LoRA settings a trained method's recipe takes (flags `--lora`, `--lora-rank`, ...)."""

    lora: bool = Field(False, description="train a LoRA adapter instead of every weight")
    lora_rank: int = Field(16, ge=1, le=512, description="the adapter's rank r")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA α (the update is scaled by α / r)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    lora_target_modules: list[str] = Field(
        ["all-linear"], description="modules that get an adapter (peft names; all-linear: every linear layer)"
    )
    merge_adapter: bool = Field(False, description="with --lora: write the merged full model, not the adapter")

    @model_validator(mode="after")
    def _merge_needs_lora(self):
        if self.merge_adapter and not self.lora:
            raise ValueError("merge_adapter needs lora (there is no adapter to merge)")
        return self


def peft_config(recipe: LoraRecipe):
    """peft's config for the recipe's adapter, or None for full-weight training."""
    if not recipe.lora:
        return None
    from peft import LoraConfig

    modules = recipe.lora_target_modules
    return LoraConfig(
        r=recipe.lora_rank,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=modules[0] if modules == ["all-linear"] else modules,
        task_type="CAUSAL_LM",
    )


def base_reference(model: str) -> str:
    """How an adapter names the model it was trained on: a hub id as given, a directory by its absolute path (a
    LoRA variant trained from: the merged copy it started from)."""
    if looks_like_hub_id(model) and not Path(model).exists():
        return model
    return str(Path(full_weights(model)).resolve())


def one_name_per_weight(model, state_dict: dict) -> dict:
    """A state dict gathered from shards or partitions, with a weight tied to another (an LM head tied to the
    embeddings) once, under its first name, as `save_pretrained` writes it from the model itself: gathered copies
    share no storage, so `save_pretrained` would write both."""
    own = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    return {name: tensor for name, tensor in state_dict.items() if name in own}


def save_weights(model, directory: Path, recipe: LoraRecipe, state_dict: dict | None = None) -> dict:
    """Write the trained weights into `directory`: the adapter (pointing at its base), or with `merge_adapter`
    the merged model, or the full model. `state_dict`: the weights gathered from the processes that hold them in
    shards (FSDP, ZeRO-3). Returns the card's LoRA fields (none without LoRA)."""
    if not recipe.lora:
        if state_dict is not None:
            state_dict = one_name_per_weight(model, state_dict)
        model.save_pretrained(str(directory), state_dict=state_dict)
        return {}
    settings = {"rank": recipe.lora_rank, "alpha": recipe.lora_alpha, "target_modules": recipe.lora_target_modules}
    if recipe.merge_adapter:
        model.merge_and_unload().save_pretrained(str(directory))
        return {"lora": {**settings, "merged": True}}
    model.save_pretrained(str(directory), state_dict=state_dict)
    base = base_reference(recipe.model)
    write_base_reference(directory, base)
    return {"lora": settings, "base": base}


def full_weights(model: str | Path) -> str:
    """A model's full weights: the model itself, or for a LoRA adapter its base with the adapter merged in — written
    once under `runs/merged-adapters/`, keyed on the adapter's and its base's files (for what needs whole models:
    mergekit, training from a LoRA variant, a server without LoRA)."""
    from l2s.adapters import ADAPTER_CONFIG, is_adapter
    from l2s.atomic import file_lock
    from l2s.cards import is_model_dir
    from l2s.home import run_dir_for
    from l2s.models import weights_version

    if not is_adapter(model):
        return str(model)
    config = (Path(model) / ADAPTER_CONFIG).read_text()
    target = run_dir_for("merged-adapters", model, config, weights_version(model))  # (the base's weights included)
    with file_lock(target.with_name(f".{target.name}.lock")):  # (the processes of `accelerate launch`: one merges)
        if not is_model_dir(target):
            _merge(model, target)
    return str(target)


def _merge(adapter: str | Path, target: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from l2s.adapters import adapter_base
    from l2s.cards import atomic_model_dir
    from l2s.models import resolve_model

    base = AutoModelForCausalLM.from_pretrained(resolve_model(adapter_base(adapter)), dtype=torch.float32)
    with atomic_model_dir(target) as temporary:
        PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(temporary)
        AutoTokenizer.from_pretrained(adapter).save_pretrained(temporary)
