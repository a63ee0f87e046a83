"""Recipes: one YAML file per distill run (`configs/distill/*.yaml`), validated at load time so that a bad
recipe fails before any weights load; command-line flags override the file's values.

Each setting is written once, as a field of its recipe class: `l2s.flags` makes the command-line flags from the
fields (as TRL's `HfArgumentParser` does from dataclasses) and reads them back."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from l2s.generation import EngineSettings
from l2s.jsonl import CorruptFile, read_yaml
from l2s.tasks import TASK_KINDS, PromptPolicy

R = TypeVar("R", bound="Recipe")


class RecipeError(ValueError):
    pass


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def load(cls: type[R], path: str | Path | None, overrides: dict[str, Any] | None = None) -> R:
        values: dict[str, Any] = {}
        if path:
            if not Path(path).is_file():
                raise RecipeError(f"no recipe at {path}")
            try:
                values.update(read_yaml(path, "recipe"))
            except CorruptFile as error:
                raise RecipeError(str(error)) from None
        for key, value in (overrides or {}).items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):  # a nested setting: merge
                values[key] = {**values[key], **value}
            elif value is not None:
                values[key] = value
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise RecipeError(f"invalid {cls.__name__} ({path or 'flags'}):\n{error}") from None


class TaskRecipe(Recipe):
    """What a sampling method starts from and trains on: a model, a task (its train split), how its questions are
    asked, and the engine that samples."""

    model: str = Field(description="the long-CoT model to start from (a directory or a hub id)")
    task: str = Field("lab", description="lab, lab:LEVEL, jsonl:PATH or hf:NAME[:CONFIG][@SPLIT] (its train split)")
    system_prompt: str | None = Field(None, description="a system message sent before every question")
    instruction: str | None = Field(None, description="text appended to every question (R1: 'Please reason ...')")
    engine: EngineSettings = Field(default_factory=EngineSettings, description="the vLLM engine that samples")

    @field_validator("task")
    @classmethod
    def _known_task_kind(cls, spec: str) -> str:
        if spec.partition(":")[0] not in TASK_KINDS:
            raise ValueError(f"unknown task {spec!r}: use lab, lab:LEVEL, jsonl:PATH or hf:NAME[:CONFIG][@SPLIT]")
        return spec

    @property
    def model_path(self) -> Path:
        """The model's local directory (`model` may be a hub id, read through the Hugging Face cache); for a LoRA
        adapter, its base with the adapter merged in (training starts from a whole model)."""
        from distill.lora import full_weights
        from l2s.models import resolve_model

        return Path(full_weights(resolve_model(self.model)))

    @property
    def prompt(self) -> PromptPolicy:
        return PromptPolicy(system_prompt=self.system_prompt, instruction=self.instruction)
