"""Hostile and unusual input, refused before any engine is involved: body limit (413), strict types and vLLM's
integer ranges (400), fields we do not honour (400 naming them), a mistyped --config, a bad registry entry.
The app is built without starting its engines: every refusal here happens before a request is planned (a
request that passes all of them meets the engines, which are not loaded: 503 `not_ready`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from l2s.registry import register_variant, registered_variants
from server.app import build_app
from server.config import ServerConfig, VariantConfig

MESSAGES = [{"role": "user", "content": "What is 1+2?"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    model = tmp_path_factory.mktemp("model")
    (model / "config.json").write_text("{}")
    config = ServerConfig(variants=[VariantConfig(name="lab-long", path=model)], max_body_bytes=64 * 1024)
    return TestClient(build_app(config))  # no `with`: the lifespan, and so the engines, never start


def post(client, **fields):
    return client.post("/v1/chat/completions", json={"model": "lab-long", "messages": MESSAGES, **fields})


def error(response) -> dict:
    return response.json()["error"]


def test_a_request_that_passes_every_check_reaches_the_engines(client):
    response = post(
        client,
        user="u1",
        metadata={"k": "v"},
        logprobs=True,
        top_logprobs=2,
        parallel_tool_calls=None,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice="auto",
        store=False,
        ignore_eos=True,
        min_tokens=2,
        min_p=0.1,
        repetition_penalty=1.1,
        logit_bias={"5": -100},
    )
    assert response.status_code == 503 and error(response)["code"] == "not_ready", response.text


@pytest.mark.parametrize(
    "fields",
    [
        {"n": "16"},
        {"n": True},
        {"max_tokens": "5"},
        {"stream": "yes"},
        {"stream": 1},
        {"temperature": "0.5"},
        {"thinking_token_budget": True},
        {"seed": "1"},
        {"include_reasoning": 0},
    ],
)
def test_strict_types(client, fields):
    response = post(client, **fields)
    assert response.status_code == 400, (fields, response.text)
    assert error(response)["param"] == next(iter(fields))


@pytest.mark.parametrize(
    "fields",
    [
        {"thinking_token_budget": 2**64},
        {"top_k": 2**64},
        {"max_tokens": 2**40},
        {"seed": 2**64},
        {"thinking": {"type": "enabled", "budget_tokens": 2**63}},
        {"logit_bias": {"99999999999": 1}},
        {"logit_bias": {"5": 101}},
        {"min_tokens": 2**40},
    ],
)
def test_integers_beyond_what_vllm_accepts(client, fields):
    response = post(client, **fields)
    assert response.status_code == 400, (fields, response.text)


@pytest.mark.parametrize(
    "fields",
    [
        {"tool_choice": "required"},
        {"tool_choice": {"type": "function", "function": {"name": "f"}}},
        {"functions": [{"name": "f"}]},
        {"prediction": {"type": "content", "content": "x"}},
        {"best_of": 2},
        {"a_field_nobody_knows": 1},
    ],
)
def test_fields_we_do_not_honour_are_refused_by_name(client, fields):
    response = post(client, **fields)
    name = next(iter(fields))
    assert response.status_code == 400, (fields, response.text)
    assert error(response)["code"] == "unsupported_parameter" and error(response)["param"] == name
    assert name in error(response)["message"]


@pytest.mark.parametrize(
    "fields, says",
    [
        ({"top_logprobs": 2}, "requires logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"response_format": {"type": "json_schema"}}, "json_schema is required"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools"),
    ],
)
def test_malformed_openai_fields(client, fields, says):
    response = post(client, **fields)
    assert response.status_code == 400 and says in error(response)["message"], response.text


def test_off_values_of_honoured_fields_are_accepted(client):
    response = post(client, logprobs=None, top_logprobs=None, response_format=None, tools=None, tool_choice=None)
    assert response.status_code == 503 and error(response)["code"] == "not_ready", response.text


def test_responses_refusals_are_400s(client):
    body = {"model": "lab-long", "input": "hi"}
    long_name = {"text": {"format": {"type": "json_schema", "name": "n" * 65, "schema": {"type": "object"}}}}
    for extra in (long_name, {"input": []}, {"previous_response_id": "resp_1"}, {"max_output_tokens": 0}):
        response = client.post("/v1/responses", json=body | extra)
        assert response.status_code == 400, (extra, response.text)


def test_stream_options_only_with_a_stream(client):
    response = post(client, stream_options={"include_usage": True})
    assert response.status_code == 400 and "stream_options" in error(response)["message"]


def test_body_limit(client):
    junk = "x" * (65 * 1024)
    response = post(client, junk=junk)  # declared length over the limit: refused before it is read
    assert response.status_code == 413 and error(response)["code"] == "request_too_large"

    def chunks():  # no Content-Length: refused once the bytes read pass the limit
        yield json.dumps({"model": "lab-long", "messages": MESSAGES, "junk": ""})[:-2].encode()
        for _ in range(100):
            yield b"x" * 4096

    response = client.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert client.get("/health").status_code == 503  # still serving (loading: no engines in this test)


def test_a_mistyped_config_path_is_an_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "l2s.cli", "serve", "--config", str(tmp_path / "sever.yaml"), "--models-dir", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "sever.yaml: no such file" in result.stderr


def test_a_bad_registry_entry_is_skipped_and_register_refuses_it(tmp_path, caplog):
    registry = tmp_path / "registered_variants.yaml"
    registry.write_text("variants:\n  'bad name!': /somewhere\n  auto: /elsewhere\n  good: /here\n")
    assert registered_variants(registry) == {"good": "/here"}
    assert "bad name!" in caplog.text
    with pytest.raises(ValueError, match="served model id"):
        register_variant("bad name!", tmp_path, registry)


def test_admission_counts_sequences_and_reserves_before_awaiting(tmp_path):
    """The queue bound is in sequences (`n` counts n times), and a burst cannot overshoot it: each request's
    slots are reserved before planning awaits the tokenizer thread."""
    import asyncio
    from types import SimpleNamespace

    from server.errors import APIError
    from server.protocol import ChatCompletionRequest
    from server.service import ChatService

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    variant = VariantConfig(name="v", path=model, engine={"max_num_seqs": 2}, max_waiting=2)  # room for 4
    service = ChatService(ServerConfig(variants=[variant]))
    engine = service.engines["v"]
    model_config = SimpleNamespace(get_vocab_size=lambda: 100, max_logprobs=20, is_diffusion=False)
    engine.engine = SimpleNamespace(
        errored=False,
        vllm_config=SimpleNamespace(model_config=model_config, speculative_config=None, structured_outputs_config=None),
    )
    engine.tokenizer = SimpleNamespace(apply_chat_template=lambda messages, **kwargs: [1, 2, 3])
    engine.max_model_len = 64

    def request(n: int) -> ChatCompletionRequest:
        return ChatCompletionRequest(model="v", messages=MESSAGES, n=n)

    async def burst(sizes: list[int]) -> list:
        return await asyncio.gather(*(service.plan(request(n)) for n in sizes), return_exceptions=True)

    plans = asyncio.run(burst([1] * 10))
    admitted = [plan for plan in plans if not isinstance(plan, Exception)]
    refused = [plan for plan in plans if isinstance(plan, APIError)]
    assert len(admitted) == 4 and len(refused) == 6 and {e.status for e in refused} == {429}
    assert all(error.retry_after for error in refused) and engine.in_flight == 4
    for plan in admitted:
        plan.release()
        plan.release()  # once only
    assert engine.in_flight == 0

    plans = asyncio.run(burst([3, 2]))
    assert not isinstance(plans[0], Exception) and isinstance(plans[1], APIError) and plans[1].status == 429
    assert engine.in_flight == 3
    plans[0].release()
    too_many = asyncio.run(burst([5]))[0]  # more than the variant can ever admit: not worth retrying
    assert isinstance(too_many, APIError) and too_many.status == 400 and engine.in_flight == 0
    metrics = service.metrics.requests
    assert metrics.labels("v", "429")._value.get() == 7 and metrics.labels("v", "400")._value.get() == 1


def _requests_counted(client, variant: str, status: int) -> float:
    text = client.get("/metrics").text
    line = f'l2s_requests_total{{status="{status}",variant="{variant}"}} '
    return next((float(row.split()[-1]) for row in text.splitlines() if row.startswith(line)), 0.0)


def test_refusals_before_planning_are_counted_by_status(client):
    """Requests the server refuses before it plans them are in the requests metric too: an invalid body under
    the variant it names (else `unknown`), a body too large, an unparseable one, and one to the Responses API."""
    before = {
        ("lab-long", 400): _requests_counted(client, "lab-long", 400),
        ("unknown", 400): _requests_counted(client, "unknown", 400),
        ("unknown", 413): _requests_counted(client, "unknown", 413),
    }
    post(client, temperature="hot")
    post(client, model="nope", temperature="hot")
    client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    client.post("/v1/responses", json={"model": "lab-long", "input": "hi", "max_output_tokens": "many"})
    post(client, junk="x" * (65 * 1024))
    assert _requests_counted(client, "lab-long", 400) == before[("lab-long", 400)] + 2
    assert _requests_counted(client, "unknown", 400) == before[("unknown", 400)] + 2
    assert _requests_counted(client, "unknown", 413) == before[("unknown", 413)] + 1


def test_api_key_refusals_are_counted(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    keyed = TestClient(build_app(ServerConfig(variants=[VariantConfig(name="v", path=model)]), api_key="secret"))
    assert keyed.post("/v1/chat/completions", json={"model": "v", "messages": MESSAGES}).status_code == 401
    assert keyed.get("/v1/models").status_code == 401  # refused, but not a generation request: not counted
    assert _requests_counted(keyed, "unknown", 401) == 1
