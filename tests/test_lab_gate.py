"""The lab's accuracy gate (configs/lab.yaml `long.gate`): a long model below it trains on in extra rounds.

The rounds' logic on a tiny model, with the measurement replaced by a scripted sequence of accuracies (the
real one, vLLM on a scratch copy of the model, runs in every `make setup`'s lab build: tests/test_lab_models.py
checks what its card recorded)."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from l2s.lab import build
from l2s.lab.build import AccuracyGate, LabRecipe
from l2s.lab.task import generate_problems
from l2s.lab.tokenizer import train_tokenizer
from l2s.lab.traces import completion
from l2s.lab.train import TrainSettings, train


def _tiny(tmp_path, init_seed: int = 0):
    problems = generate_problems("train", 60, seed=0)
    rng = random.Random(0)
    tokenizer = train_tokenizer([p.question for p in problems] + [completion(p, "long", rng) for p in problems], 400)
    torch.manual_seed(init_seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config), tokenizer, problems


def _run_gate(tmp_path, monkeypatch, accuracies: list[float], gate: AccuracyGate):
    model, tokenizer, problems = _tiny(tmp_path)
    measured = iter(accuracies)
    monkeypatch.setattr(build, "_validation_accuracy", lambda *args: next(measured))
    recipe = LabRecipe.load(build.DEFAULT_RECIPE)
    checkpoint = tmp_path / ".lab-long-key.train-state.pt"
    maker = lambda problem, rng: completion(problem, "long", rng)  # noqa: E731
    settings = TrainSettings(steps=4, batch_size=2, learning_rate=0.002, warmup_steps=1)
    losses = train(model, tokenizer, problems, maker, settings, 1, "t", checkpoint, True)
    rounds = build._train_to_gate(
        "lab-long", model, tokenizer, problems, maker, settings, gate, recipe, 1, checkpoint, losses
    )
    return rounds, losses, model


def test_a_model_below_the_gate_trains_more_steps_until_it_passes(tmp_path, monkeypatch):
    gate = AccuracyGate(min_accuracy=0.9, extra_steps=3, max_rounds=3)
    rounds, losses, _ = _run_gate(tmp_path, monkeypatch, [0.5, 0.8, 0.95], gate)
    assert rounds == [
        {"steps": 4, "validation_accuracy": 0.5, "passed": False},
        {"steps": 7, "validation_accuracy": 0.8, "passed": False},
        {"steps": 10, "validation_accuracy": 0.95, "passed": True},
    ]
    assert len(losses) == 10
    # each round's final state is kept (so a killed build resumes past it), under the stage's key
    assert sorted(p.name for p in tmp_path.glob(".lab-long-key*")) == [
        ".lab-long-key-extra1.train-state.pt", ".lab-long-key-extra2.train-state.pt", ".lab-long-key.train-state.pt",
    ]  # fmt: skip
    build._remove_training_states(tmp_path / "lab-long")
    assert not list(tmp_path.glob(".lab-long-*"))


def test_a_model_that_passes_at_once_is_left_as_its_steps_made_it(tmp_path, monkeypatch):
    rounds, losses, _ = _run_gate(tmp_path, monkeypatch, [0.99], AccuracyGate(min_accuracy=0.97))
    assert rounds == [{"steps": 4, "validation_accuracy": 0.99, "passed": True}] and len(losses) == 4


def test_a_model_that_never_passes_is_kept_with_a_warning(tmp_path, monkeypatch, capsys):
    gate = AccuracyGate(min_accuracy=0.9, extra_steps=2, max_rounds=2)
    rounds, losses, _ = _run_gate(tmp_path, monkeypatch, [0.1, 0.2, 0.3], gate)
    assert [r["passed"] for r in rounds] == [False, False, False] and len(losses) == 8
    assert "WARNING: lab-long is below its gate (90%) after 2 extra rounds" in capsys.readouterr().out


def test_a_finished_training_call_resumed_trains_no_step_again(tmp_path):
    """`keep_final`: what lets a build killed while measuring, or in a later round, resume without redoing."""
    model, tokenizer, problems = _tiny(tmp_path)
    maker = lambda problem, rng: completion(problem, "long", rng)  # noqa: E731
    checkpoint = tmp_path / "state.pt"
    settings = TrainSettings(steps=3, batch_size=2)
    losses = train(model, tokenizer, problems, maker, settings, 0, "t", checkpoint, keep_final=True)
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    fresh, _, _ = _tiny(tmp_path, init_seed=1)  # trained afresh, it would end elsewhere
    assert train(fresh, tokenizer, problems, maker, settings, 0, "t", checkpoint, keep_final=True) == losses
    assert all(torch.equal(fresh.state_dict()[name], tensor) for name, tensor in weights.items())


def test_the_gate_is_validated_at_load(tmp_path):
    with pytest.raises(ValueError):
        AccuracyGate(min_accuracy=1.5)
    assert LabRecipe.load(build.DEFAULT_RECIPE).long.gate.min_accuracy == 0.97
