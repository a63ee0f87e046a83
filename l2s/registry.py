"""The registry of variants to serve that live outside the models directory: `$L2S_HOME/registered_variants.yaml`.

`l2s distill … --register` writes it and `l2s serve` reads it, so the two meet through a file."""

from __future__ import annotations

from pathlib import Path

import yaml

from l2s.home import registry_path


def registered_variants(path: Path | None = None) -> dict[str, str]:
    """name -> model directory."""
    path = path or registry_path()
    if not path.is_file():
        return {}
    return dict((yaml.safe_load(path.read_text()) or {}).get("variants", {}))


def register_variant(name: str, model_dir: str | Path, path: Path | None = None) -> None:
    path = path or registry_path()
    variants = registered_variants(path)
    variants[name] = str(Path(model_dir).resolve())
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(
        "# Written by `l2s distill ... --register`; `l2s serve` hosts these next start.\n"
        + yaml.safe_dump({"variants": variants}, sort_keys=True)
    )
    temporary.replace(path)
