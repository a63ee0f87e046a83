"""LoRA adapters as models: a peft adapter directory (`adapter_config.json`, `adapter_model.safetensors`, the
base's tokenizer files, and our `card.json`) names its base model and stands wherever a model does — `l2s serve`
hosts it on its base's engine, `l2s eval` and offline generation run the base's engine with the adapter applied.

This module reads adapter directories; `distill/lora.py` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
# the ranks vLLM can reserve for adapters (its `max_lora_rank`); an adapter's rank is rounded up to one of them
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def _config(path: str | Path) -> dict:
    from l2s.jsonl import read_json

    return read_json(Path(path) / ADAPTER_CONFIG, "adapter config")


def adapter_base(path: str | Path) -> str:
    """The base model an adapter was trained on, as peft recorded it (a directory or a hub id)."""
    base = _config(path).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"adapter {path}: its adapter_config.json names no base_model_name_or_path")
    return str(base)


def adapter_rank(path: str | Path) -> int:
    """The largest LoRA rank in an adapter (peft lets modules have their own, in `rank_pattern`)."""
    config = _config(path)
    return max([int(config.get("r", 8)), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def adapter_target_modules(paths: list[str | Path]) -> list[str] | None:
    """The module names (last name part, as vLLM's `lora_target_modules` takes them) that any of the adapters
    adapts; None when one of them names its targets by a pattern (peft allows a regex string), which vLLM
    cannot restrict to. Restricting an engine to them saves the LoRA work on every other layer and lets the CPU
    build keep torch.compile (l2s/cpu_lora_compiled.py)."""
    names: set[str] = set()
    for path in paths:
        own = module_suffixes(_config(path).get("target_modules"))
        if own is None:
            return None
        names.update(own)
    return sorted(names)


def module_suffixes(targets) -> list[str] | None:
    """peft's `target_modules` (module names, full or last part; or one regex string) as the last name parts
    vLLM's `lora_target_modules` takes; None for a pattern or nothing."""
    if isinstance(targets, str) or not targets:
        return None
    return sorted({str(target).rsplit(".", 1)[-1] for target in targets})


def vllm_max_rank(ranks: list[int]) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds every one of `ranks`."""
    need = max(ranks, default=1)
    for rank in VLLM_RANKS:
        if rank >= need:
            return rank
    raise ValueError(f"LoRA rank {need} is above the most vLLM serves ({VLLM_RANKS[-1]})")


def lora_request(name: str, path: str | Path, int_id: int = 1):
    """vLLM's request for adapter `path`; `int_id` must differ between the adapters of one engine."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=name, lora_int_id=int_id, lora_path=str(path))


def write_base_reference(path: str | Path, base: str) -> None:
    """Point an adapter directory at its base (peft writes whatever path the base was loaded from)."""
    config_path = Path(path) / ADAPTER_CONFIG
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
