"""Command-line flags made from a pydantic model's fields, so each setting is written once (as TRL's
`HfArgumentParser` does from dataclasses): distill recipes, and the engine settings of `l2s eval`."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel


def _flag_type(annotation) -> tuple[Any, dict]:
    """(the scalar type, extra argparse settings) of a field's annotation; `X | None` is X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is Literal:
        return None, {"choices": list(typing.get_args(annotation))}
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        item = str if typing.get_origin(item) is Literal else item  # (the recipe checks the choices)
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
        if info.description and "default" in info.description:  # it says so itself
            help_text = info.description
        else:
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


def recipe_overrides(
    args: argparse.Namespace, recipe_class: type[BaseModel], skip: tuple[str, ...] = (), prefix: str = ""
) -> dict[str, Any]:
    """The flags `add_recipe_flags` made, as given: {field: value} (nested sections as dicts), unset ones left out."""
    overrides: dict[str, Any] = {}
    for name, info in recipe_class.model_fields.items():
        if name in skip:
            continue
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            nested = recipe_overrides(args, info.annotation, prefix=f"{prefix}{name}__")
            if nested:
                overrides[name] = nested
        elif getattr(args, prefix + name, None) is not None:
            overrides[name] = getattr(args, prefix + name)
    return overrides
