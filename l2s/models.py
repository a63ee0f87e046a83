"""Where a model named on the command line, in a recipe or in the server config lives on disk.

A model is a local directory (a Hugging Face model directory: `config.json`, weights, tokenizer) or a Hugging
Face hub id (`deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B`), read from the local Hugging Face cache and downloaded
into it when the hub is reachable (never when `HF_HUB_OFFLINE=1`). Every command resolves its models here
before loading anything, so a missing model is one clear line naming it, not a stack trace from deep inside
vLLM or Transformers.
"""

from __future__ import annotations

from pathlib import Path

from l2s.adapters import is_adapter

# what a model needs to run and train here (not the .bin duplicates, `original/` checkpoints or GGUF files
# that some repositories ship beside the safetensors)
MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py"]


class ModelNotFound(ValueError):
    pass


def looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~")) and " " not in spec


def resolve_model(spec: str | Path) -> Path:
    """The local directory holding model `spec` (a directory, or a hub id through the Hugging Face cache)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not is_adapter(path):
            raise ModelNotFound(
                f"model {spec}: the directory has no config.json (not a Hugging Face model directory) and no "
                "adapter_config.json (not a LoRA adapter)"
            )
        return path
    if not looks_like_hub_id(str(spec)):
        raise ModelNotFound(f"model {spec}: no such directory, and not a hub id of the form owner/name")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(spec), local_files_only=True, allow_patterns=MODEL_FILES))
    except Exception:
        pass  # not cached (completely): fetch it, if the hub can be reached
    try:
        return Path(snapshot_download(str(spec), allow_patterns=MODEL_FILES))
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotFound(
            f"model {spec}: not a local directory, not in the Hugging Face cache, and the hub cannot provide it "
            f"({type(error).__name__}: {reason[:200]})"
        ) from None


def weights_version(model_dir: str | Path) -> str:
    """Which weights a model directory holds now: its weight files' names, sizes and times (and for a LoRA adapter
    its base's too), so that what was computed from an older model under the same name is never reused."""
    from l2s.adapters import adapter_base
    from l2s.cards import stable_hash

    path = Path(model_dir)
    files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    identity: list = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    if is_adapter(path):
        identity.append(("base", weights_version(resolve_model(adapter_base(path)))))
    return stable_hash(identity)


def model_label(spec: str | Path) -> str:
    """The short name of a model in cards and results: a directory's name, a hub id's last part."""
    return Path(str(spec)).name
