"""The real server (vLLM engines serving the lab models) on loopback, called with the official `openai` client."""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from l2s.local_server import stop_server, wait_healthy
from tests.conftest import gauge, start_server

pytestmark = pytest.mark.slow

QUESTION = "What is 33+22+67+48?"
MESSAGES = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def tokenizer(lab_models):
    return AutoTokenizer.from_pretrained(lab_models / "lab-long")


def _chat(client, **kwargs):
    kwargs.setdefault("model", "lab-long")
    kwargs.setdefault("messages", MESSAGES)
    return client.chat.completions.create(**kwargs)


def _reasoning(message) -> str:
    return getattr(message, "reasoning_content", None) or ""


def test_health_models_and_answer(client, server_url):
    assert httpx.get(f"{server_url}/health").status_code == 200
    models = {model.id: model for model in client.models.list().data}
    assert {"lab-long", "lab-short", "auto"} <= set(models)
    assert models["lab-long"].card["role"] == "long" and models["lab-short"].card["role"] == "short"
    assert models["lab-long"].card["parents"] == ["lab-base"]
    response = _chat(client, temperature=0)
    message = response.choices[0].message
    assert message.content.startswith("The answer is")
    assert (
        _chat(client, messages=[{"role": "user", "content": "What is 33+48?"}], temperature=0)
        .choices[0]
        .message.content
        == "The answer is 81."
    )
    assert "<think>" not in message.content and "</think>" not in message.content
    assert message.reasoning_content == message.model_extra["reasoning"] and len(message.reasoning_content) > 20
    assert response.usage.completion_tokens_details.reasoning_tokens > 10
    assert response.model == "lab-long"


@pytest.mark.parametrize("budget", [0, 1, 8, 32])
def test_budget_is_a_hard_cap_under_concurrency(client, tokenizer, budget):
    """75 requests at once: 50 budgeted (half greedy, half sampled) mixed with 25 unbudgeted greedy ones."""

    def one(i: int):
        budgeted, greedy = i % 3 != 0, i % 3 != 2
        extra = {"thinking_token_budget": budget} if budgeted else {}
        response = _chat(client, temperature=0 if greedy else 1.0, seed=i, max_tokens=400, extra_body=extra)
        return budgeted, greedy, response

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, range(75)))
    assert sum(budgeted for budgeted, _, _ in results) == 50
    for budgeted, greedy, response in results:
        choice = response.choices[0]
        counted = response.usage.completion_tokens_details.reasoning_tokens
        if greedy:
            # the count is the tokens between the markers (greedy text re-tokenizes to the ids it came from;
            # a sampled one may take a non-canonical split, so it is checked by the cap alone)
            assert counted == len(tokenizer.encode(_reasoning(choice.message), add_special_tokens=False))
        if budgeted:
            assert counted <= budget
            assert choice.model_extra["reasoning_truncated"] == (budget > 0 and counted >= budget)  # 0 cuts nothing
            if greedy:
                assert choice.message.content.startswith("The answer is")  # made to close and answer
    assert any(r.usage.completion_tokens_details.reasoning_tokens > 32 for b, _, r in results if not b)


def test_stream_and_whole_agree(client):
    whole = _chat(client, temperature=0, extra_body={"thinking_token_budget": 40})
    stream = _chat(
        client,
        temperature=0,
        extra_body={"thinking_token_budget": 40},
        stream=True,
        stream_options={"include_usage": True},
    )
    reasoning, answer, usage, finish = "", "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            reasoning += choice.delta.model_extra.get("reasoning_content") or ""
            assert (choice.delta.model_extra.get("reasoning") or "") == (
                choice.delta.model_extra.get("reasoning_content") or ""
            )
            answer += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert reasoning == whole.choices[0].message.reasoning_content
    assert answer == whole.choices[0].message.content
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.completion_tokens_details.reasoning_tokens == whole.usage.completion_tokens_details.reasoning_tokens
    assert finish == whole.choices[0].finish_reason == "stop"


def test_include_reasoning_false_hides_but_counts(client):
    response = _chat(client, temperature=0, extra_body={"include_reasoning": False})
    message = response.choices[0].message
    assert getattr(message, "reasoning_content", None) is None and "reasoning" not in (message.model_extra or {})
    assert response.usage.completion_tokens_details.reasoning_tokens > 10
    stream = _chat(client, temperature=0, stream=True, extra_body={"include_reasoning": False})
    assert all(not (c.delta.model_extra or {}).get("reasoning_content") for chunk in stream for c in chunk.choices)


def test_effort_levels_are_nested_and_auto_names_the_variant(client):
    used = {}
    for effort in ["none", "low", "medium", "high"]:
        response = _chat(client, temperature=0, reasoning_effort=effort)
        used[effort] = response.usage.completion_tokens_details.reasoning_tokens
    assert (
        used["none"] == 0 <= used["low"] <= 16
        and used["low"] <= used["medium"] <= 64 <= used["high"]
        or (used["none"] == 0 and used["low"] <= used["medium"] <= used["high"])
    )
    small = _chat(client, model="auto", temperature=0, extra_body={"thinking_token_budget": 8})
    large = _chat(client, model="auto", temperature=0)
    assert small.model == "lab-short" and large.model == "lab-long"
    anthropic_style = _chat(client, temperature=0, extra_body={"thinking": {"type": "enabled", "budget_tokens": 5}})
    assert anthropic_style.usage.completion_tokens_details.reasoning_tokens <= 5


BAD_REQUESTS = [
    (dict(model="no-such-model"), openai.NotFoundError, "model_not_found"),
    (dict(messages=[]), openai.BadRequestError, None),
    (dict(messages=[{"role": "wizard", "content": "x"}]), openai.BadRequestError, None),
    (dict(temperature=7), openai.BadRequestError, None),
    (dict(max_tokens=0), openai.BadRequestError, None),
    (dict(max_tokens=10**6), openai.BadRequestError, "context_length_exceeded"),
    (dict(messages=[{"role": "user", "content": "7+" * 2000}]), openai.BadRequestError, "context_length_exceeded"),
    (dict(reasoning_effort="extreme"), openai.BadRequestError, None),
    (dict(extra_body={"thinking_token_budget": -5}), openai.BadRequestError, None),
    (dict(extra_body={"thinking_token_budget": "many"}), openai.BadRequestError, None),
    (dict(n=100), openai.BadRequestError, None),
    (dict(stop=[""]), openai.BadRequestError, None),  # found by schemathesis: vLLM rejects it mid-request
]


@pytest.mark.parametrize("kwargs, error_class, code", BAD_REQUESTS)
def test_bad_input_gets_openai_errors_and_server_keeps_serving(client, kwargs, error_class, code):
    with pytest.raises(error_class) as raised:
        _chat(client, **kwargs)
    body = raised.value.body
    assert set(body) >= {"message", "type", "param", "code"}
    assert len(body["message"]) <= 500 and "/" not in body["message"].replace("/v1", "")
    if code:
        assert body["code"] == code
    assert _chat(client, temperature=0, max_tokens=20).choices[0].message is not None


def test_unparseable_json_is_a_400(server_url):
    response = httpx.post(
        f"{server_url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "error" in response.json()


def test_schemathesis_finds_no_server_error(server_url, tmp_path):
    """Property-based requests generated from /openapi.json (its examples reach the engines): never a 5xx."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", f"{server_url}/openapi.json",
         "--checks", "not_a_server_error", "--max-examples", "25", "--request-timeout", "60",
         "--generation-deterministic", "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=540, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout and "generated" in result.stdout


def test_cancelled_streams_free_their_slots(client, server_url):
    """50 streams dropped by their clients after a few chunks: the server keeps serving, nothing stays running."""

    def drop_after_some(i: int):
        with httpx.stream(
            "POST",
            f"{server_url}/v1/chat/completions",
            timeout=60,
            json={
                "model": "lab-long" if i % 2 else "lab-short",
                "messages": MESSAGES,
                "stream": True,
                "temperature": 1.0,
                "max_tokens": 400,
            },
        ) as response:
            for count, _ in enumerate(response.iter_lines()):
                if count >= 3:
                    break  # closing the connection mid-stream

    threads = [threading.Thread(target=drop_after_some, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.time() + 2
    while gauge(server_url, "l2s_running_requests") > 0 and time.time() < deadline:
        time.sleep(0.1)
    assert gauge(server_url, "l2s_running_requests") == 0
    assert _chat(client, temperature=0, max_tokens=20).choices[0].message is not None
    metrics = httpx.get(f"{server_url}/metrics").text
    for name in (
        "l2s_time_to_first_token_seconds",
        "l2s_time_to_first_answer_token_seconds",
        "l2s_reasoning_tokens",
        "l2s_budget_cuts_total",
        "l2s_requests_total",
    ):
        assert name in metrics


def test_api_key_and_sigterm(lab_models, tmp_path):
    """A second server (lab-short alone) with --api-key: 401 without the key, /health open; SIGTERM stops it."""
    (tmp_path / "lab-short").symlink_to(lab_models / "lab-short")
    process, base_url, log_path = start_server(tmp_path, "--api-key", "s3cret", "--config", "", log_name="server-key")
    try:
        wait_healthy(base_url, process)
        wrong = openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model="lab-short", messages=MESSAGES)
        right = openai.OpenAI(base_url=f"{base_url}/v1", api_key="s3cret", max_retries=0)
        assert right.chat.completions.create(model="lab-short", messages=MESSAGES, temperature=0).choices
        assert httpx.get(f"{base_url}/health").status_code == 200
    finally:
        # uvicorn finishes its shutdown, then re-raises the SIGTERM it caught: exit 0 or "killed by SIGTERM"
        assert stop_server(process, timeout=60) in (0, -signal.SIGTERM), log_path.read_text()[-2000:]


def test_idle_connections_outlive_common_client_pools(server_url):
    """A pooled connection reused after 6 s of idleness still works: the server's keep-alive (75 s) outlasts
    uvicorn's default 5 s, which closed connections that clients were about to reuse ("Server disconnected")."""
    import http.client
    from urllib.parse import urlsplit

    address = urlsplit(server_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    for pause in (0, 6):
        time.sleep(pause)
        connection.request("GET", "/health")  # the same socket each time: http.client does not reconnect
        response = connection.getresponse()
        response.read()
        assert response.status == 200
    connection.close()
