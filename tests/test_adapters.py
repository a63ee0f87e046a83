"""Fast tests of LoRA adapters as models: reading adapter directories, and the fix to vLLM's CPU LoRA ops."""

import json

import pytest
import torch

from l2s.adapters import adapter_base, adapter_rank, vllm_max_rank
from l2s.cards import find_models
from l2s.cpu_lora_fix import register
from l2s.models import resolve_model


def test_adapter_directories_are_models(tmp_path):
    adapter = tmp_path / "lora-short"
    adapter.mkdir()
    config = {"base_model_name_or_path": "/models/lab-long", "r": 8, "rank_pattern": {"q_proj": 24}}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert find_models(tmp_path) == {}  # no weights and no card yet: not finished
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    assert find_models(tmp_path) == {"lora-short": adapter}
    assert resolve_model(adapter) == adapter
    assert adapter_base(adapter) == "/models/lab-long" and adapter_rank(adapter) == 24
    assert vllm_max_rank([8]) == 8 and vllm_max_rank([8, 24]) == 32 and vllm_max_rank([]) == 1
    with pytest.raises(ValueError, match="above the most vLLM serves"):
        vllm_max_rank([1024])


def test_cpu_lora_ops_leave_base_model_tokens_alone():
    """Index -1 (no adapter) must not pick the last adapter slot (vllm-project/vllm#48421)."""
    from vllm.lora.ops.torch_ops import lora_ops

    register()
    register()  # idempotent: each vLLM process may load its plugins more than once
    inputs = torch.ones(3, 4)
    a = torch.stack([torch.full((1, 2, 4), float(i + 1)) for i in range(2)])  # two adapters' A: (slots, 1, r, in)
    b = torch.stack([torch.full((1, 4, 2), 1.0) for _ in range(2)])  # their B: (slots, 1, out, r)
    indices = torch.tensor([-1, 0, 1])
    shrunk = torch.full((3, 2), 7.0)
    lora_ops.bgmv_shrink(inputs, a, shrunk, indices, 1.0)
    assert shrunk.tolist() == [[0, 0], [4, 4], [8, 8]]
    out = torch.full((3, 4), 5.0)
    lora_ops.bgmv_expand(shrunk, b, out, indices, add_inputs=False)
    assert out.tolist() == [[5] * 4, [8] * 4, [16] * 4]  # the base token's row is left as it was
    out = torch.zeros(3, 6)
    lora_ops.bgmv_expand_slice(shrunk, b, out, indices, 2, 4, add_inputs=True)
    assert out.tolist() == [[0] * 6, [0, 0] + [8] * 4, [0, 0] + [16] * 4]


def test_lora_serving_settings_are_checked(monkeypatch):
    from pydantic import ValidationError

    from l2s.cpu_lora_fix import check_cpu_lora_fix
    from server.config import EngineConfig

    assert EngineConfig(max_lora_rank=32).max_lora_rank == 32
    with pytest.raises(ValidationError, match="max_lora_rank must be one of"):
        EngineConfig(max_lora_rank=24)
    check_cpu_lora_fix()  # installed (pyproject's entry point)
    monkeypatch.setenv("VLLM_PLUGINS", "some_other_plugin")
    with pytest.raises(ValueError, match="add it to VLLM_PLUGINS"):
        check_cpu_lora_fix()
