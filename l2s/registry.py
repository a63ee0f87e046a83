"""The registry of variants to serve that live outside the models directory: `$L2S_HOME/registered_variants.yaml`.

`l2s distill … --register` writes it and `l2s serve` reads it, so the two meet through a file."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import yaml

from l2s.atomic import file_lock, write_text_atomic
from l2s.home import registry_path
from l2s.jsonl import CorruptFile, read_yaml

logger = logging.getLogger("l2s.registry")
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # what `l2s serve` accepts as a model id


def registered_variants(path: Path | None = None) -> dict[str, str]:
    """name -> model directory. An entry `l2s serve` could not host (a bad name, `auto`) is skipped with a warning
    naming it, so one bad line cannot stop a server from starting."""
    path = path or registry_path()
    if not path.is_file():
        return {}
    variants_entry = read_yaml(path, "variant registry").get("variants") or {}
    if not isinstance(variants_entry, dict):
        raise CorruptFile(f"{path}: `variants` is not a mapping of names to model directories")
    entries = dict(variants_entry)
    variants = {}
    for name, model_dir in entries.items():
        if not isinstance(name, str) or not is_variant_name(name):
            logger.warning("%s: skipping the entry %r: not a valid variant name", path, name)
            continue
        variants[name] = str(model_dir)
    return variants


def is_variant_name(name: str) -> bool:
    """A name `l2s serve` can host: letters, digits, '.', '_' and '-', and not `auto` (reserved for routing)."""
    return bool(VARIANT_NAME.match(name)) and name != "auto"


def check_variant_name(name: str) -> str:
    if not is_variant_name(name):
        raise ValueError(f"{name!r} cannot be a served model id: letters, digits, '.', '_' and '-', not 'auto'")
    return name


def register_variant(name: str, model_dir: str | Path, path: Path | None = None) -> None:
    check_variant_name(name)
    path = path or registry_path()
    with file_lock(path.with_name(f".{path.name}.lock")):  # two --register at once: both entries land
        variants = registered_variants(path)
        variants[name] = str(Path(model_dir).resolve())
        write_text_atomic(
            path,
            "# Written by `l2s distill ... --register`; `l2s serve` hosts these next start.\n"
            + yaml.safe_dump({"variants": variants}, sort_keys=True),
        )
