"""RL's DeepSpeed settings (distill/deepspeed_policy.py), read from the launcher's environment as `accelerate launch
--use_deepspeed` sets it: what RL's loop decides is set, what it does not do is refused. The training itself runs in
tests/test_distributed.py."""

from __future__ import annotations

import json

import pytest

from distill.deepspeed_policy import deepspeed_plugin


@pytest.fixture
def launched(monkeypatch):
    """The environment `accelerate launch --use_deepspeed --zero_stage N` gives each process."""

    def launch(stage: int = 2, **variables: str) -> None:
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", str(stage))
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return launch


def test_rl_sets_one_optimiser_step_per_minibatch(launched):
    launched(stage=3)
    config = deepspeed_plugin().deepspeed_config
    assert config["gradient_accumulation_steps"] == 1 and config["managed_gradient_accumulation"] is False
    assert config["gradient_clipping"] == 0.0 and "train_batch_size" not in config
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize(
    ("stage", "variables", "refusal"),
    [
        (1, {}, "ZeRO-2 or ZeRO-3, not stage 1"),
        (2, {"ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, "does not offload optimizer"),
        (3, {"ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "nvme"}, "does not offload param"),
    ],
)
def test_what_rl_does_not_do_is_refused(launched, stage, variables, refusal):
    launched(stage=stage, **variables)
    with pytest.raises(SystemExit, match=refusal):
        deepspeed_plugin()


@pytest.mark.parametrize(
    ("section", "refusal"),
    [
        ({"bf16": {"enabled": True}}, "trains in float32"),
        ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-5}}}, "DeepSpeed's own optimiser"),
        ({"scheduler": {"type": "WarmupLR"}}, "learning-rate scheduler"),
    ],
)
def test_a_config_file_with_what_rl_does_not_do_is_refused(launched, tmp_path, section, refusal):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 2}, **section}))
    launched(ACCELERATE_DEEPSPEED_CONFIG_FILE=str(config))
    with pytest.raises(SystemExit, match=refusal):
        deepspeed_plugin()
