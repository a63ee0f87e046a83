"""The OpenAI surface on the real server (the lab models on vLLM engines): logprobs and structured outputs are
honoured (streamed too), and every response, stream chunk and error parses into the `openai` SDK's own models
(generated from OpenAI's published API spec) without loss."""

from __future__ import annotations

import concurrent.futures
import json
import time
import typing

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionTokenLogprob
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.shared import ErrorObject
from pydantic import TypeAdapter

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "What is 33+48?"}]
SUM_SCHEMA = {  # the lab model can only answer one way: {"answer":"81"} or {"answer":"other"}
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["81", "other"]}},
    "required": ["answer"],
    "additionalProperties": False,
}


def _chat(client, **kwargs):
    return client.chat.completions.create(**{"model": "lab-long", "messages": MESSAGES, "temperature": 0} | kwargs)


def _tokens(entries) -> str:
    return "".join(entry.token if hasattr(entry, "token") else entry["token"] for entry in entries)


def test_logprobs_cover_reasoning_and_answer(client):
    response = _chat(client, logprobs=True, top_logprobs=2)
    choice = response.choices[0]
    answer = choice.logprobs.content
    reasoning = [ChatCompletionTokenLogprob.model_validate(entry) for entry in choice.logprobs.reasoning_content]
    # one entry per token of each part (the markers belong to neither), spelling out exactly its text
    assert _tokens(answer) == choice.message.content == "The answer is 81."
    assert _tokens(reasoning) == choice.message.reasoning_content
    assert len(reasoning) == response.usage.completion_tokens_details.reasoning_tokens
    for entry in answer + reasoning:
        alternatives = [alt.logprob for alt in entry.top_logprobs]
        assert len(alternatives) == 2 and alternatives == sorted(alternatives, reverse=True)
        assert entry.logprob == pytest.approx(alternatives[0])  # greedy: the sampled token is the likeliest
        assert entry.bytes == list(entry.token.encode())
    assert _chat(client).choices[0].logprobs is None  # not asked for: none

    hidden = _chat(client, logprobs=True, extra_body={"include_reasoning": False}).choices[0].logprobs
    assert "reasoning_content" not in hidden.model_extra and _tokens(hidden.content) == "The answer is 81."

    streamed = {"content": [], "reasoning_content": []}
    for chunk in _chat(client, logprobs=True, stream=True):
        for choice in chunk.choices:
            if choice.logprobs is not None:
                streamed["content"] += choice.logprobs.content or []
                streamed["reasoning_content"] += choice.logprobs.model_extra.get("reasoning_content") or []
    assert _tokens(streamed["content"]) == "The answer is 81."
    assert _tokens(streamed["reasoning_content"]) == _tokens(reasoning)


def test_response_format_constrains_the_answer_not_the_reasoning(client):
    free = _chat(client).choices[0].message
    schema_format = {"type": "json_schema", "json_schema": {"name": "sum", "schema": SUM_SCHEMA, "strict": True}}
    constrained = _chat(client, response_format=schema_format).choices[0]
    assert json.loads(constrained.message.content) == {"answer": "81"}
    assert constrained.message.reasoning_content == free.reasoning_content  # the reasoning stayed free
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in _chat(client, response_format=schema_format, stream=True)
        if chunk.choices
    )
    assert json.loads(streamed) == {"answer": "81"}
    # any JSON object: the lab model cannot write one sensibly, but what it writes starts as one
    assert _chat(client, response_format={"type": "json_object"}, max_tokens=150).choices[0].message.content[0] == "{"
    with pytest.raises(openai.BadRequestError, match="Grammar error|schema"):
        _chat(client, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 7}}})


def test_tools_need_a_tool_parser(client):
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as raised:
        _chat(client, tools=tools)
    assert raised.value.body["code"] == "unsupported_parameter" and raised.value.body["param"] == "tools"
    assert _chat(client, tools=tools, tool_choice="none").choices[0].message.content == "The answer is 81."


REQUESTS = [  # (request body, expected status): what the SDK's models must parse, streamed and whole
    ({"model": "lab-long", "messages": MESSAGES}, 200),
    ({"model": "lab-short", "messages": MESSAGES, "n": 2, "seed": 3, "logprobs": True, "top_logprobs": 1}, 200),
    ({"model": "auto", "messages": MESSAGES, "reasoning_effort": "low", "max_completion_tokens": 40}, 200),
    ({"model": "lab-long", "messages": MESSAGES, "response_format": {"type": "json_object"}, "max_tokens": 30}, 200),
    ({"model": "lab-long", "messages": MESSAGES, "thinking_token_budget": 0, "include_reasoning": False}, 200),
    ({"model": "nope", "messages": MESSAGES}, 404),
    ({"model": "lab-long", "messages": MESSAGES, "max_tokens": 10**6}, 400),
    ({"model": "lab-long", "messages": MESSAGES, "best_of": 2}, 400),
    ({"model": "lab-long", "messages": []}, 400),
]


def lossless(model_class, data: dict) -> None:
    """`data` parses into the SDK's model (so it has every field OpenAI's spec requires, each of its type), and
    nothing is lost on the way."""
    parsed = TypeAdapter(model_class).validate_python(data)
    assert parsed.model_dump(mode="json", exclude_unset=True) == data


@pytest.mark.parametrize("body, status", REQUESTS)
def test_every_response_parses_into_the_sdk_models_without_loss(server_url, body, status):
    whole = httpx.post(f"{server_url}/v1/chat/completions", json=body, timeout=120)
    assert whole.status_code == status, whole.text
    if status != 200:
        lossless(ErrorObject, whole.json()["error"])
        return
    lossless(ChatCompletion, whole.json())

    lines = []
    with httpx.stream("POST", f"{server_url}/v1/chat/completions", json=body | {"stream": True,
                      "stream_options": {"include_usage": True}}, timeout=120) as stream:  # fmt: skip
        assert stream.status_code == 200
        lines = [line for line in stream.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert line.startswith("data: ")
        lossless(ChatCompletionChunk, json.loads(line.removeprefix("data: ")))


def test_a_long_concurrent_mix_with_retries_off(server_url):
    """100 requests from 16 threads sharing one `openai` client (one connection pool), retries off, with idle
    pauses between waves: every one answered; none meets a connection the server closed under it."""
    client = openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=300)

    def one(i: int) -> str:
        kwargs = {"model": ("lab-long", "lab-short", "auto")[i % 3], "messages": MESSAGES, "seed": i}
        kwargs |= [{}, {"n": 2}, {"reasoning_effort": "low"}, {"extra_body": {"thinking_token_budget": 8}}][i % 4]
        if i % 2:
            chunks = list(client.chat.completions.create(**kwargs, stream=True))
            return chunks[-1].choices[0].finish_reason if chunks[-1].choices else "?"
        return client.chat.completions.create(**kwargs).choices[0].finish_reason

    finished = []
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for wave in range(4):
            finished += list(pool.map(one, range(wave * 25, wave * 25 + 25)))
            if wave < 3:
                time.sleep(6)  # longer than uvicorn's default keep-alive (5 s)
    assert len(finished) == 100 and set(finished) <= {"stop", "length"}


# the SDK's model of each stream event, by its `type` (the SDK's union is discriminated by `type`)
EVENT_MODELS = {
    typing.get_args(model.model_fields["type"].annotation)[0]: model
    for model in typing.get_args(typing.get_args(ResponseStreamEvent)[0])
}


def test_responses_api_whole_and_streamed(client, server_url):
    """`client.responses.create`: the same variants, budgets, efforts and `auto` as chat completions, the
    reasoning as a `reasoning` output item, its token count in `output_tokens_details`."""
    chat = _chat(client)
    whole = client.responses.create(model="lab-long", input="What is 33+48?", temperature=0)
    assert whole.status == "completed" and whole.output_text == chat.choices[0].message.content
    reasoning, message = whole.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text == chat.choices[0].message.reasoning_content
    assert message.type == "message" and message.role == "assistant"
    details = whole.usage.output_tokens_details
    assert details.reasoning_tokens == chat.usage.completion_tokens_details.reasoning_tokens
    assert whole.usage.output_tokens == chat.usage.completion_tokens

    budgeted = client.responses.create(
        model="lab-long", input="What is 33+22+67+48?", temperature=0, extra_body={"thinking_token_budget": 8}
    )
    assert budgeted.usage.output_tokens_details.reasoning_tokens <= 8 and budgeted.output_text
    routed = client.responses.create(model="auto", input=[{"role": "user", "content": "What is 3+4?"}],
                                     reasoning={"effort": "low"})  # fmt: skip
    assert routed.model == "lab-short"
    cut = client.responses.create(model="lab-long", input="What is 33+48?", max_output_tokens=5)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    sum_format = {"format": {"type": "json_schema", "name": "sum", "schema": SUM_SCHEMA}}
    shaped = client.responses.create(model="lab-long", input="What is 33+48?", temperature=0, text=sum_format)
    assert json.loads(shaped.output_text) == {"answer": "81"}

    body = {"model": "lab-long", "input": "What is 33+48?", "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server_url}/v1/responses", json=body, timeout=120) as stream:
        events = [json.loads(line.removeprefix("data: ")) for line in stream.iter_lines() if line.startswith("data:")]
    for event in events:
        lossless(EVENT_MODELS[event["type"]], event)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    final = Response.model_validate(events[-1]["response"])
    lossless(Response, whole.model_dump(mode="json", exclude_unset=True))
    assert final.output_text == whole.output_text and final.output[0].content == whole.output[0].content
    deltas = [event["delta"] for event in events if event["type"] == "response.reasoning_text.delta"]
    assert "".join(deltas) == reasoning.content[0].text

    for unsupported in ({"previous_response_id": "resp_1"}, {"reasoning": {"summary": "auto"}},
                        {"tools": [{"type": "web_search"}]}, {"background": True}):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(model="lab-long", input="hi", **unsupported)
        assert raised.value.body["code"] == "unsupported_parameter"
