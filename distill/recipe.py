"""Recipes: one YAML file per distill run (`configs/distill/*.yaml`), validated at load time so that a bad
recipe fails before any weights load; command-line flags override the file's values."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

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
        values.update({key: value for key, value in (overrides or {}).items() if value is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise RecipeError(f"invalid {cls.__name__} ({path or 'flags'}):\n{error}") from None
