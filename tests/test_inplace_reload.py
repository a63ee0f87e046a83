"""Loading a checkpoint into a running engine leaves it exactly as a fresh engine on that checkpoint (RL relies on
it: each iteration's policy is loaded in place)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def _greedy(engine, prompts):
    from vllm import SamplingParams

    outputs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=400), use_tqdm=False)
    return [list(output.outputs[0].token_ids) for output in outputs]


def test_reloaded_engine_answers_as_a_fresh_one(lab_models):
    from l2s.generation import EngineSettings, chat_prompt_ids, close_engine, open_engine
    from l2s.inplace_reload import reload_engine_weights
    from l2s.lab.task import generate_problems

    questions = [p.question for p in generate_problems("validation", 16, seed=3)]
    engine = open_engine(lab_models / "lab-long", EngineSettings())
    try:
        prompts = [{"prompt_token_ids": chat_prompt_ids(engine.get_tokenizer(), q)} for q in questions]
        before = _greedy(engine, prompts)  # also fills the prefix cache with lab-long's KV blocks
        reload_engine_weights(engine, lab_models / "lab-short")
        reloaded = _greedy(engine, prompts)
    finally:
        close_engine(engine)
    fresh_engine = open_engine(lab_models / "lab-short", EngineSettings())
    try:
        fresh = _greedy(fresh_engine, prompts)
    finally:
        close_engine(fresh_engine)
    assert before != fresh  # the two checkpoints answer differently, so the comparison can fail
    assert reloaded == fresh
