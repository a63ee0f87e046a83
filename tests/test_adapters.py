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


def test_compiled_cpu_lora_wrapper_matches_per_token_lora_with_base_tokens_left_alone():
    """The branch-free wrapper (l2s/cpu_lora_compiled.py) against y += scale · (x · A[slot]ᵀ) · B[slot]ᵀ per token,
    slot -1 meaning no adapter, over two slices of different widths (as in a packed qkv or gate_up layer)."""
    from l2s.cpu_lora_compiled import CompiledPunicaWrapperCPU

    torch.manual_seed(0)
    tokens, hidden, rank, slices = 5, 6, 2, (4, 3)
    wrapper = CompiledPunicaWrapperCPU(max_num_batched_tokens=16, max_batches=4, device="cpu")
    indices = torch.tensor([-1, 0, 2, 1, -1])
    wrapper._token_lora_indices[:tokens] = indices
    wrapper._token_lora_indices[tokens:] = 2  # stale entries past the batch must not matter
    a = tuple(torch.randn(3, 1, rank, hidden) for _ in slices)  # (slots, 1, rank, in)
    b = tuple(torch.randn(3, 1, width, rank) for width in slices)  # (slots, 1, out, rank)
    x, y = torch.randn(tokens, hidden), torch.randn(tokens, sum(slices))
    expected = y.clone()
    for token, slot in enumerate(indices.tolist()):
        offset = 0
        for a_slice, b_slice, width in zip(a, b, slices):
            if slot >= 0:
                expected[token, offset : offset + width] += 0.5 * (x[token] @ a_slice[slot, 0].T) @ b_slice[slot, 0].T
            offset += width
    out = wrapper.add_lora_linear(y, x, a, b, 0.5, slices)
    assert torch.allclose(out, expected, atol=1e-5) and out is y  # in place, like vLLM's own ops
    assert torch.equal(out[0], expected[0]) and torch.equal(out[4], expected[4])  # base tokens: untouched


def test_lora_target_modules_come_from_the_adapters(tmp_path):
    from l2s.adapters import adapter_target_modules
    from l2s.cpu_lora_compiled import only_linear

    def adapter(name: str, targets) -> str:
        (tmp_path / name).mkdir()
        config = {"base_model_name_or_path": "base", "r": 8, "target_modules": targets}
        (tmp_path / name / "adapter_config.json").write_text(json.dumps(config))
        return str(tmp_path / name)

    full_names = adapter("all-linear", ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"])
    short_names = adapter("attention", ["q_proj", "v_proj"])
    pattern = adapter("regex", ".*attn.*")
    assert adapter_target_modules([full_names, short_names]) == ["down_proj", "q_proj", "v_proj"]
    assert adapter_target_modules([full_names, pattern]) is None  # vLLM cannot restrict to a pattern
    assert only_linear(["q_proj", "down_proj"])
    assert not only_linear(None) and not only_linear(["q_proj", "embed_tokens"])


def test_compiled_cpu_lora_wrapper_refuses_to_be_compiled_into_embedding_lora():
    """vLLM's embedding and LM-head LoRA ops branch on per-batch state: traced once they would be silently wrong."""
    from l2s.cpu_lora_compiled import CompiledPunicaWrapperCPU

    wrapper = CompiledPunicaWrapperCPU(max_num_batched_tokens=16, max_batches=4, device="cpu")
    wrapper._token_lora_indices.zero_()  # (metadata with which vLLM's own op would compile and run without error)
    wrapper.indices_len = [3, 3, 3, 3]

    @torch.compile(backend="eager", fullgraph=True)
    def forward(y, x, b):
        wrapper.add_lora_embedding(y, x, b)
        return y

    with pytest.raises(Exception, match="cannot be compiled|Observed exception"):
        forward(torch.zeros(3, 4), torch.zeros(3, 2), torch.zeros(2, 1, 4, 2))
