"""The lab models `make setup` built: what their cards say, and that they meet the lab's targets."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from l2s.cards import find_models, read_card
from l2s.reasoning import marker_token_ids

pytestmark = pytest.mark.slow


def test_cards_say_how_each_model_was_made(lab_models):
    models = find_models(lab_models)
    assert {"lab-base", "lab-long", "lab-short"} <= set(models)
    for name in ("lab-long", "lab-short"):
        card = read_card(models[name])
        assert card["parents"] == ["lab-base"] and card["method"] == "lab-sft"
        for key in ("recipe", "recipe_hash", "code_version", "seed", "parameters", "data", "training", "evaluation"):
            assert key in card, (name, key)
        assert card["evaluation"]["test_problems"] >= 500
    assert read_card(models["lab-base"])["parents"] == []


def test_lab_targets(lab_models):
    long = read_card(lab_models / "lab-long")["evaluation"]
    short = read_card(lab_models / "lab-short")["evaluation"]
    assert long["accuracy"] >= 0.90
    assert short["accuracy"] <= long["accuracy"] - 0.15
    assert short["mean_reasoning_tokens"] <= 0.5 * long["mean_reasoning_tokens"]
    sampling = long["sampling"]
    assert sampling["k"] == 8 and sampling["pass_at_k"] >= 0.95
    assert sampling["shortest_correct_over_mean"] <= 0.75
    # the build's gate measured lab-long on validation problems and it passed (configs/lab.yaml `long.gate`)
    gate = read_card(lab_models / "lab-long")["training"]["gate"]
    assert gate["rounds"][-1]["passed"] and gate["rounds"][-1]["validation_accuracy"] >= gate["min_accuracy"]


def test_long_model_keeps_its_habits_greedily(lab_models):
    """Greedy lab-long plans, checks and redoes: its reasoning is at least twice the essential steps (the long
    trace with no optional part), so the long2short methods have something to remove."""
    import random

    from l2s.lab.task import generate_problems
    from l2s.lab.traces import LongTraceOptions, long_reasoning

    tokenizer = AutoTokenizer.from_pretrained(lab_models / "lab-long")
    bare = LongTraceOptions(plan=0, check=0, again=0, redo=0)
    problems = generate_problems("test", 500, seed=0)
    essential = sum(
        len(tokenizer(long_reasoning(p, random.Random(0), bare), add_special_tokens=False)["input_ids"])
        for p in problems
    ) / len(problems)
    long = read_card(lab_models / "lab-long")["evaluation"]
    assert long["mean_reasoning_tokens"] >= 2 * essential, (long["mean_reasoning_tokens"], essential)


def test_models_load_with_single_token_markers_and_chat_template(lab_models):
    tokenizer = AutoTokenizer.from_pretrained(lab_models / "lab-long")
    start, end = marker_token_ids(tokenizer)
    assert start != end
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12+34+56?"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<s><|user|>What is 12+34+56?<|assistant|>"
    model = AutoModelForCausalLM.from_pretrained(lab_models / "lab-long")
    assert model.config.model_type == "llama"
    assert (lab_models / "lab-long" / "model.safetensors").is_file()
    assert json.loads((lab_models / "lab-long" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_second_build_is_cached(lab_models, tmp_path):
    import subprocess
    import sys
    import time

    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "l2s.cli", "lab", "build", "--out", str(lab_models)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("cached at") == 3
    assert time.time() - started < 60
