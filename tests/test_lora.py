"""LoRA variants: `l2s distill shortest|dpo|rl --lora` write peft adapters of lab-long; `distill merge` takes one;
`l2s eval` runs one on its base's engine; `l2s serve` hosts all three on lab-long's one engine, each with its own
behaviour, budgets and reasoning fields, also when they answer at once; an adapter whose base is not hosted is
refused at startup."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from l2s.cards import read_card
from l2s.lab.task import generate_problems
from l2s.local_server import start_server, stop_server, wait_healthy
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

# a short run of each method's recipe, as an adapter (a LoRA takes a larger learning rate than full weights)
LORA = ["--lora", "--lora-rank", "8"]
SAMPLED = ["--num-problems", "64", "--k", "4", "--batch-size", "8"]
METHODS = {
    "shortest": [*SAMPLED, "--max-steps", "30", "--learning-rate", "0.003"],
    "dpo": [*SAMPLED, "--max-steps", "20", "--learning-rate", "0.0005"],
    # no validation: the last iteration's adapter is the output (lr: the recipe's before it went to 1e-4, with
    # which two iterations of 8 problems were measured to move the adapter off its base)
    "rl": ["--iterations", "2", "--consolidation-iterations", "0", "--problems-per-iteration", "8"]
    + ["--validation-problems", "0", "--learning-rate", "0.00015"],
}
QUESTIONS = [problem.question for problem in generate_problems("test", 8, seed=7, levels=(2,))]


def _l2s(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "l2s.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def adapters(lab_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    for method, settings in METHODS.items():
        recipe = ROOT / "configs" / "distill" / f"{method}.yaml"
        result = _l2s(
            root,
            *["distill", method, "--recipe", str(recipe), "--model", str(lab_models / "lab-long"), *LORA],
            *[*settings, "--out", str(root / f"lora-{method}")],
        )
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return root


def test_distill_writes_peft_adapters_and_eval_runs_them(lab_models, adapters):
    for method in METHODS:
        adapter = adapters / f"lora-{method}"
        assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "config.json").exists()
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str((lab_models / "lab-long").resolve()) and config["r"] == 8
        card = read_card(adapter)
        assert card["lora"]["rank"] == 8 and card["parents"] == ["lab-long"] and card["training"]
    # RL's engine applied each iteration's adapter: its log-probabilities of what it sampled are the trainer's
    training = read_card(adapters / "lora-rl")["training"]
    assert training["selected_iteration"] == 2 and all(h["engine_logprob_gap"] < 1e-3 for h in training["history"])
    merged = _l2s(  # every method composes: an adapter takes part in a merge as its base with the adapter merged in
        adapters,
        *["distill", "merge", "--long", str(lab_models / "lab-long"), "--short", str(adapters / "lora-shortest")],
        *["--out", str(adapters / "merged")],
    )
    assert merged.returncode == 0, (merged.stdout + merged.stderr)[-3000:]
    assert read_card(adapters / "merged")["parents"] == ["lab-long", "lora-shortest"]
    out = adapters / "eval"
    command = ["eval", "--offline", "--task", "lab", "--budgets", "none", "--num-problems", "40", "--out", str(out)]
    command += ["--model", str(lab_models / "lab-long"), "--model", str(adapters / "lora-shortest")]
    # lora-shortest merged into lab-long (by the merge above; beside it, its lock file)
    [merged_adapter] = [path for path in (adapters / "runs" / "merged-adapters").iterdir() if path.is_dir()]
    command += ["--model", str(merged_adapter)]
    result = _l2s(adapters, *command)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    results = {r["model"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    long, short = results["lab-long"], results["lora-shortest"]
    assert short["accuracy"] >= long["accuracy"] - 0.05, results  # the adapter is the long model, shortened
    assert short["mean_reasoning_tokens"] < 0.9 * long["mean_reasoning_tokens"], results
    # applied on the engine (compiled on the CPU: l2s/cpu_lora_compiled.py), the adapter answers as its merged copy
    merged = results[merged_adapter.name]
    assert merged["accuracy"] == short["accuracy"], results
    assert abs(merged["mean_reasoning_tokens"] - short["mean_reasoning_tokens"]) < 0.5, results


def _ask(base_url: str, model: str, question: str, **extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0, **extra}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _engine_processes(server_pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(server_pid).children(recursive=True) if "EngineCore" in " ".join(p.cmdline())]


def test_adapters_are_served_on_their_base_engine(lab_models, adapters, tmp_path):
    variants = [{"name": "lab-long", "path": str(lab_models / "lab-long")}]
    variants += [{"name": f"lora-{m}", "path": str(adapters / f"lora-{m}")} for m in METHODS]  # three adapters
    variants[1]["efforts"] = {"low": 8, "medium": 24, "high": -1}
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({"variants": variants}))
    empty = tmp_path / "no-models"
    empty.mkdir()
    env = {**os.environ, "L2S_HOME": str(tmp_path)}
    process, base_url = start_server(empty, "--config", str(config), log_path=tmp_path / "server.log", env=env)
    try:
        wait_healthy(base_url, process)
        assert len(_engine_processes(process.pid)) == 1  # four variants, one vLLM engine
        listed = {m["id"]: m for m in httpx.get(f"{base_url}/v1/models").json()["data"]}
        assert listed["lora-shortest"]["parent"] == listed["lora-dpo"]["parent"] == "lab-long"
        assert listed["lab-long"]["parent"] is None and listed["lora-shortest"]["efforts"]["low"] == 8

        models = ["lab-long", "lora-shortest", "lora-dpo", "lora-rl"]
        alone = {(m, q): _ask(base_url, m, q) for m in models for q in QUESTIONS}
        with concurrent.futures.ThreadPoolExecutor(len(models) * len(QUESTIONS)) as pool:
            futures = {(m, q): pool.submit(_ask, base_url, m, q) for m in models for q in QUESTIONS}
            together = {key: future.result() for key, future in futures.items()}

        def reasoning_tokens(responses: dict, model: str) -> list[int]:
            return [responses[(model, q)]["usage"]["completion_tokens_details"]["reasoning_tokens"] for q in QUESTIONS]

        for responses in (alone, together):  # the adapter is applied, to its own requests only
            assert responses[("lora-shortest", QUESTIONS[0])]["model"] == "lora-shortest"
            shortened = sum(reasoning_tokens(responses, "lora-shortest"))
            assert shortened < 0.9 * sum(reasoning_tokens(responses, "lab-long"))
            assert reasoning_tokens(responses, "lora-dpo") != reasoning_tokens(responses, "lab-long")
        same = sum(alone[key]["choices"][0]["message"] == together[key]["choices"][0]["message"] for key in alone)
        assert same >= 0.9 * len(alone), f"{same} of {len(alone)} answers the same alone and at once"

        for model in ("lora-shortest", "lora-dpo"):  # budgets and reasoning fields as on any variant
            capped = _ask(base_url, model, QUESTIONS[0], thinking_token_budget=12)
            assert capped["usage"]["completion_tokens_details"]["reasoning_tokens"] == 12
            assert capped["choices"][0]["message"]["reasoning_content"] and capped["choices"][0]["reasoning_truncated"]
        low = _ask(base_url, "lora-shortest", QUESTIONS[1], reasoning_effort="low")
        assert low["usage"]["completion_tokens_details"]["reasoning_tokens"] == 8  # its own efforts
    finally:
        stop_server(process)


def test_an_adapter_whose_base_is_not_hosted_is_refused_at_startup(adapters, tmp_path):
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({"variants": [{"name": "orphan", "path": str(adapters / "lora-shortest")}]}))
    result = _l2s(tmp_path, "serve", "--models-dir", str(tmp_path), "--config", str(config))
    assert result.returncode == 2
    assert "variant orphan is a LoRA adapter of" in result.stderr and "which no hosted variant serves" in result.stderr
