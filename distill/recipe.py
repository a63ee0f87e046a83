"""Recipes: one YAML file per distill run (`configs/distill/*.yaml`), validated at load time so that a bad
recipe fails before any weights load; command-line flags override the file's values.

Each setting is written once, as a field of its recipe class: `add_recipe_flags` makes the command-line flags
from the fields (as TRL's `HfArgumentParser` does from dataclasses), `recipe_overrides` reads them back."""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from l2s.generation import EngineSettings
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
            loaded = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(loaded, dict):
                raise RecipeError(f"{path}: a recipe is a mapping of settings")
            values.update(loaded)
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
    """What a sampling method trains on: a task (its train split) and how its questions are asked."""

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
        """The model's local directory (`model` may be a hub id, read through the Hugging Face cache)."""
        from l2s.models import resolve_model

        return resolve_model(self.model)

    @property
    def prompt(self) -> PromptPolicy:
        return PromptPolicy(system_prompt=self.system_prompt, instruction=self.instruction)


# --- command-line flags from the fields ------------------------------------------------------------------------


def _flag_type(annotation) -> tuple[Any, dict]:
    """(the scalar type, extra argparse settings) of a field's annotation; `X | None` is X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is Literal:
        return None, {"choices": list(typing.get_args(annotation))}
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return None, {
            "type": lambda text: [item(part) for part in text.split(",") if part.strip()],
            "metavar": "A,B,...",
        }
    return annotation, {}


def add_recipe_flags(
    parser: argparse.ArgumentParser, recipe_class: type[BaseModel], skip: tuple[str, ...] = (), prefix: str = ""
) -> None:
    """One `--flag` per recipe field (booleans as `--flag/--no-flag`; a nested section's fields as
    `--section-field`), help from the field's description and default. Every flag defaults to None: only what
    is given overrides the recipe file."""
    for name, info in recipe_class.model_fields.items():
        if name in skip:
            continue
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            add_recipe_flags(parser, info.annotation, prefix=f"{prefix}{name}__")
            continue
        kind, extra = _flag_type(info.annotation)
        default = "required" if info.is_required() else f"default: {info.default}"
        help_text = f"{info.description} ({default})" if info.description else f"({default})"
        name = prefix + name
        flag = "--" + name.replace("__", "-").replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(
                flag,
                dest=name,
                default=None,
                help=help_text.replace("%", "%%"),
                **({"type": kind} if kind else {}),
                **{"metavar": None if "choices" in extra else name.split("__")[-1].upper(), **extra},
            )


def recipe_overrides(args: argparse.Namespace, recipe_class: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, info in recipe_class.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            nested = recipe_overrides(args, info.annotation, prefix=f"{prefix}{name}__")
            if nested:
                overrides[name] = nested
        elif getattr(args, prefix + name, None) is not None:
            overrides[name] = getattr(args, prefix + name)
    return overrides
