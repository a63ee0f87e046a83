"""Every command on tiny models in real formats (tests/real_formats.py: Qwen3 with `enable_thinking`, a Qwen2 with
DeepSeek-R1's template that opens `<think>` in the prompt, a plain Llama instruct model without reasoning tokens),
on user-format data, with no network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from openai import BadRequestError, OpenAI
from transformers import AutoTokenizer

from l2s.cards import read_card
from l2s.formats import detect_format
from l2s.local_server import stop_server, wait_healthy
from tests.conftest import ROOT, start_server, write_sum_dataset
from tests.real_formats import build_all, build_qwen3

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is 33+22+67+48?"}]


def _l2s(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "l2s.cli", *args], capture_output=True, text=True, timeout=1800, cwd=cwd
    )


@pytest.fixture(scope="module")
def real_models(lab_models, tmp_path_factory) -> dict[str, Path]:
    return build_all(lab_models / "lab-long", tmp_path_factory.mktemp("real-formats"))


def test_formats_are_detected_from_tokenizer_and_template(real_models):
    qwen3 = detect_format(AutoTokenizer.from_pretrained(real_models["qwen3"]))
    assert qwen3.markers.start == "<think>" and not qwen3.start_in_prompt and qwen3.thinking_switch == "enable_thinking"
    r1 = detect_format(AutoTokenizer.from_pretrained(real_models["r1"]))
    assert r1.reasons and r1.start_in_prompt and r1.thinking_switch is None
    assert not detect_format(AutoTokenizer.from_pretrained(real_models["plain"])).reasons
    with pytest.raises(ValueError, match="not single tokens"):
        from l2s.reasoning import ReasoningMarkers

        detect_format(AutoTokenizer.from_pretrained(real_models["plain"]), ReasoningMarkers("<think>", "</think>"))


@pytest.fixture(scope="module")
def real_client(real_models, tmp_path_factory):
    """`l2s serve` with the default config on a models directory that holds no lab model at all; tiny-qwen3 is
    listed with vLLM's `hermes` tool parser (Qwen3's tool-call format)."""
    config = yaml.safe_load((ROOT / "configs" / "server.yaml").read_text())
    config["variants"] = [
        config["defaults"] | {"name": "tiny-qwen3", "path": str(real_models["qwen3"]), "tool_parser": "hermes"}
    ]
    config_path = tmp_path_factory.mktemp("config") / "server.yaml"
    config_path.write_text(yaml.safe_dump(config))
    process, base_url, log_path = start_server(
        real_models["r1"].parent, "--config", str(config_path), log_name="real-formats"
    )
    try:
        wait_healthy(base_url, process, timeout=900)
    except Exception:
        stop_server(process)
        raise RuntimeError("server failed to start:\n" + log_path.read_text()[-3000:]) from None
    yield OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    stop_server(process)


def test_r1_format_reasons_from_the_prompt_with_exact_budgets(real_client):
    """The R1 template opens <think> in the prompt: the completion's reasoning is counted from its first token,
    the budget holds exactly, and no marker reaches the content."""
    free = real_client.chat.completions.create(model="tiny-r1", messages=QUESTION, temperature=0, max_tokens=600)
    message = free.choices[0].message
    assert "The answer is 170" in message.content and "<think>" not in message.content
    assert "</think>" not in message.content and "33+22" in message.reasoning_content
    assert free.usage.completion_tokens_details.reasoning_tokens > 50
    capped = real_client.chat.completions.create(
        model="tiny-r1", messages=QUESTION, temperature=0, max_tokens=600, extra_body={"thinking_token_budget": 16}
    )
    assert capped.usage.completion_tokens_details.reasoning_tokens == 16
    assert "</think>" not in capped.choices[0].message.content


def test_qwen3_thinking_switch_and_template_kwargs(real_client):
    """reasoning_effort "none" on a model whose template can switch thinking off turns it off there: the whole
    completion is content, with no reasoning tokens; so does chat_template_kwargs."""
    for extra in ({"reasoning_effort": "none"}, {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}):
        reply = real_client.chat.completions.create(
            model="tiny-qwen3", messages=QUESTION, temperature=1, seed=3, max_tokens=24, **extra
        )
        assert reply.usage.completion_tokens_details.reasoning_tokens == 0
        assert reply.choices[0].message.content and not getattr(reply.choices[0].message, "reasoning_content", "")
    thinking = real_client.chat.completions.create(
        model="tiny-qwen3", messages=QUESTION, temperature=1, seed=3, max_tokens=24
    )
    details = thinking.usage.completion_tokens_details
    assert "<think>" not in (thinking.choices[0].message.content or "")
    assert details.reasoning_tokens <= thinking.usage.completion_tokens


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
        },
    }
]


def test_tools_reach_the_template_and_the_tool_parser(real_client, real_models):
    """A variant with a tool parser: the tools are rendered by its chat template (the prompt grows by them), and
    the answer goes through vLLM's hermes parser. A random-weight model writes no tool call, so the parser is
    shown on Qwen3's format directly, through the same code the server runs."""
    plain = real_client.chat.completions.create(model="tiny-qwen3", messages=QUESTION, max_tokens=8, seed=1)
    with_tools = real_client.chat.completions.create(
        model="tiny-qwen3", messages=QUESTION, max_tokens=8, seed=1, tools=TOOLS, tool_choice="auto"
    )
    tokenizer = AutoTokenizer.from_pretrained(real_models["qwen3"])
    rendered = tokenizer.apply_chat_template(QUESTION, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert '"name": "add"' in rendered
    assert with_tools.usage.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    assert with_tools.choices[0].finish_reason in ("stop", "length") and not with_tools.choices[0].message.tool_calls
    with pytest.raises(BadRequestError, match="tool-call parser"):  # a variant without one refuses tools
        real_client.chat.completions.create(model="tiny-r1", messages=QUESTION, tools=TOOLS)

    from server.config import VariantConfig
    from server.engine import VariantEngine

    engine = VariantEngine(VariantConfig(name="tiny-qwen3", path=real_models["qwen3"], tool_parser="hermes"))
    engine.tokenizer = tokenizer
    request = {"model": "tiny-qwen3", "messages": QUESTION, "tools": TOOLS}
    text = 'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 33, "b": 22}}\n</tool_call>'
    reader = engine.tool_reader(request)
    content, calls = reader.read(text)
    assert content == "Let me add.\n" and len(calls) == 1
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("chatcmpl-tool-")
    assert calls[0]["function"] == {"name": "add", "arguments": '{"a": 33, "b": 22}'}
    assert reader.read("The answer is 170.") == ("The answer is 170.", [])
    broken = QUESTION + [{"role": "assistant", "content": "", "tool_calls": "oops"}]
    with pytest.raises(ValueError, match="tool parser cannot read"):  # a 400 at planning, before any generation
        engine.tool_reader({"model": "tiny-qwen3", "messages": broken, "tools": TOOLS})


def test_plain_model_answers_in_content(real_client):
    """A model with no reasoning markers: everything it writes is content, 0 reasoning tokens, streamed or not."""
    reply = real_client.chat.completions.create(
        model="tiny-plain", messages=QUESTION, temperature=1, seed=5, max_tokens=20
    )
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens_details.reasoning_tokens == 0
    stream = real_client.chat.completions.create(
        model="tiny-plain", messages=QUESTION, temperature=1, seed=5, max_tokens=20, stream=True
    )
    content = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert content == reply.choices[0].message.content


def test_eval_and_distill_on_the_r1_format(real_models, tmp_path):
    """eval on an hf dataset, shortest and dpo on a jsonl task, one RL iteration: the R1 model's reasoning is split the
    same way everywhere (it starts in the prompt), and its answers are verified."""
    jsonl, hf_dir = write_sum_dataset(tmp_path / "data", 400)
    r1 = str(real_models["r1"])
    evaluated = _l2s(
        "eval", "--offline", "--model", r1, "--task", f"hf:{hf_dir}@train", "--num-problems", "24",
        "--out", str(tmp_path / "eval"), cwd=tmp_path,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (result,) = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    assert result["accuracy"] >= 0.9 and result["mean_reasoning_tokens"] > 50
    shortest = _l2s(
        "distill", "shortest", "--model", r1, "--task", f"jsonl:{jsonl}", "--num-problems", "24", "--k", "4",
        "--max-steps", "2", "--batch-size", "8", "--report-to", "tensorboard", "--out", str(tmp_path / "r1-shortest"),
        cwd=tmp_path,
    )  # fmt: skip
    assert shortest.returncode == 0, (shortest.stdout + shortest.stderr)[-3000:]
    assert read_card(tmp_path / "r1-shortest")["parents"] == ["tiny-r1"]
    (work_dir,) = (tmp_path / "runs/distill").glob("r1-shortest-*")
    assert "train/loss" in _tensorboard_scalars(work_dir / "tensorboard")  # TRL's trainer, told by the recipe
    dpo = _l2s(
        "distill", "dpo", "--model", r1, "--task", f"jsonl:{jsonl}", "--num-problems", "24", "--k", "4",
        "--max-steps", "2", "--batch-size", "4", "--out", str(tmp_path / "r1-dpo"), cwd=tmp_path,
    )  # fmt: skip
    assert dpo.returncode == 0, (dpo.stdout + dpo.stderr)[-3000:]
    assert read_card(tmp_path / "r1-dpo")["data"]["pairs"] > 0
    rl = _l2s(
        "distill", "rl", "--model", r1, "--task", f"jsonl:{jsonl}", "--iterations", "1", "--problems-per-iteration",
        "4", "--k", "4", "--max-tokens", "400", "--validation-problems", "8", "--report-to", "tensorboard",
        "--out", str(tmp_path / "r1-rl"), cwd=tmp_path,
    )  # fmt: skip
    assert rl.returncode == 0, (rl.stdout + rl.stderr)[-3000:]
    (run_dir,) = (tmp_path / "runs/rl").glob("r1-rl-*")
    (metrics,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics["accuracy"] > 0.5 and metrics["engine_logprob_gap"] < 0.05
    scalars = _tensorboard_scalars(run_dir / "tensorboard")
    assert {"train/accuracy", "train/kl_term", "validation/accuracy", "validation/reasoning_tokens"} <= scalars


def _tensorboard_scalars(directory) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return set(events.Tags()["scalars"])


def test_merge_two_qwen3_models(real_models, tmp_path):
    other = build_qwen3(tmp_path / "tiny-qwen3-other", seed=1)
    merged = _l2s(
        "distill", "merge", "--long", str(real_models["qwen3"]), "--short", str(other),
        "--out", str(tmp_path / "merged"), cwd=tmp_path,
    )  # fmt: skip
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert detect_format(AutoTokenizer.from_pretrained(tmp_path / "merged")).thinking_switch == "enable_thinking"
