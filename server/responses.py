"""OpenAI's Responses API (`POST /v1/responses`), as `client.responses.create` calls it, on the chat service.

A request is translated into a chat request (`to_chat`), so budgets, efforts, `model: "auto"`, admission and
metrics are exactly the chat path's; the service's chunks are shaped into a Response object (`response_object`)
or its stream of typed events (`response_events`): the reasoning as a `reasoning` output item
(`response.reasoning_text.delta`), the answer as a `message` item (`response.output_text.delta`), and
`usage.output_tokens_details.reasoning_tokens`. Nothing is stored: `previous_response_id` is refused.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from server.errors import APIError
from server.protocol import (
    MAX_INT32,
    ChatCompletionRequest,
    JSONSchema,
    UnsupportedParameter,
    now,
    refuse_unsupported,
)
from server.service import ChatService, Plan


class InputText(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list | None = None  # an `output_text` sent back in a conversation carries them


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[InputText]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ReasoningOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = Field(
        None, description="not supported (400): the reasoning itself is returned"
    )
    generate_summary: None = None


class TextFormat(BaseModel):
    """`text.format`: as chat's `response_format`, with the schema's fields inline."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None  # only the default: a model cannot be told to say less here


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, max_length=256, examples=["lab-long", "lab-short", "auto"])
    input: str | list[InputMessage] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_INT32)
    reasoning: ReasoningOptions | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    text: TextOptions | None = None
    top_p: float | None = Field(None, gt=0, le=1)
    # --- long2short extensions, as in chat completions ---
    thinking_token_budget: int | None = Field(
        None, ge=-1, le=MAX_INT32, description="reasoning-token cap; -1 = unlimited"
    )
    include_reasoning: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    ignore_eos: bool = False

    @model_validator(mode="after")
    def _nothing_dropped(self) -> ResponsesRequest:
        refuse_unsupported(self.model_extra or {})
        if self.reasoning is not None and self.reasoning.summary is not None:
            raise UnsupportedParameter("reasoning.summary", "the reasoning itself is in the output")
        return self

    def to_chat(self) -> ChatCompletionRequest:
        """The same request as a chat completion (a 400 if it breaks a chat request's bounds)."""
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        turns = [InputMessage(role="user", content=self.input)] if isinstance(self.input, str) else self.input
        messages += [{"role": turn.role, "content": turn.text()} for turn in turns]
        fields: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_completion_tokens": self.max_output_tokens,
            "reasoning_effort": self.reasoning.effort if self.reasoning else None,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stream": self.stream,
            "thinking_token_budget": self.thinking_token_budget,
            "include_reasoning": self.include_reasoning,
            "chat_template_kwargs": self.chat_template_kwargs,
            "ignore_eos": self.ignore_eos or None,
        }
        wanted = self.text.format if self.text else None
        try:
            if wanted is not None and wanted.type == "json_schema":
                schema = JSONSchema(name=wanted.name or "response", schema=wanted.schema_, strict=wanted.strict)
                fields["response_format"] = {"type": "json_schema", "json_schema": schema}
            elif wanted is not None:
                fields["response_format"] = {"type": wanted.type}
            return ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise APIError(400, f"{where}: {first['msg']}", code="invalid_request") from None


def _skeleton(request: ResponsesRequest, model: str, identifier: str, created: int) -> dict[str, Any]:
    """A Response object's fields that do not depend on the output."""
    text_format = (
        request.text.format.model_dump(by_alias=True, exclude_none=True)
        if request.text and request.text.format
        else {"type": "text"}
    )
    return {
        "id": identifier,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": model,
        "output": [],
        "parallel_tool_calls": False,
        "reasoning": {"effort": request.reasoning.effort if request.reasoning else None, "summary": None},
        "store": False,
        "temperature": request.temperature,
        "text": {"format": text_format},
        "tool_choice": "none",
        "tools": [],
        "top_p": request.top_p,
        "usage": None,
        "metadata": {},
    }


def _reasoning_item(identifier: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if status == "completed" else []
    return {"id": identifier, "type": "reasoning", "summary": [], "content": content, "status": status}


def _message_item(identifier: str, text: str | None, status: str) -> dict[str, Any]:
    content = [_text_part(text)] if text is not None else []
    return {"id": identifier, "type": "message", "role": "assistant", "status": status, "content": content}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _finish(response: dict, plan: Plan, finish_reason: str | None) -> dict[str, Any]:
    """The response once generation ended: completed, or incomplete when the token limit cut it."""
    final = plan.finals[0]
    prompt, completion = len(plan.prompt_ids), final.completion_tokens if final else 0
    cut = finish_reason == "length"
    return response | {
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": final.reasoning_tokens if final else 0},
            "total_tokens": prompt + completion,
        },
    }


def _ids() -> tuple[str, str, str]:
    token = uuid.uuid4().hex
    return f"resp_{token}", f"rs_{token}", f"msg_{token}"


def response_object(request: ResponsesRequest, plan: Plan, completion: dict) -> dict[str, Any]:
    """A whole Response from the chat service's completion of `request.to_chat()`."""
    identifier, reasoning_id, message_id = _ids()
    choice = completion["choices"][0]
    output = []
    reasoning = choice["message"].get("reasoning_content")
    if reasoning:
        output.append(_reasoning_item(reasoning_id, reasoning, "completed"))
    output.append(_message_item(message_id, choice["message"]["content"] or "", "completed"))
    response = _skeleton(request, completion["model"], identifier, now()) | {"output": output}
    return _finish(response, plan, choice["finish_reason"])


async def response_events(service: ChatService, request: ResponsesRequest, plan: Plan) -> AsyncIterator[str]:
    """The Responses API's server-sent events for `plan`: created, in_progress, the reasoning item and the
    message item (each added, its text in deltas, done), then completed (or incomplete); an engine failure is an
    `error` event. The stream ends there: the Responses API sends no `[DONE]`."""
    sequence = itertools.count()
    identifier, reasoning_id, message_id = _ids()
    response = _skeleton(request, plan.engine.name, identifier, now())
    output: list[dict] = []
    reasoning = answer = ""
    state = {"reasoning": None, "message": None}  # each item's output index while it is open

    def event(kind: str, **fields: Any) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': next(sequence), **fields})}\n\n"

    def open_item(kind: str, item: dict) -> str:
        state[kind] = len(output)
        output.append(item)
        return event("response.output_item.added", output_index=state[kind], item=item)

    def close_reasoning() -> str:
        index, state["reasoning"] = state["reasoning"], None
        output[index] = _reasoning_item(reasoning_id, reasoning, "completed")
        at = {"output_index": index, "item_id": reasoning_id}
        return event("response.reasoning_text.done", **at, content_index=0, text=reasoning) + event(
            "response.output_item.done", output_index=index, item=output[index]
        )

    def open_message() -> str:
        added = open_item("message", _message_item(message_id, None, "in_progress"))
        at = {"output_index": state["message"], "item_id": message_id}
        return added + event("response.content_part.added", **at, content_index=0, part=_text_part(""))

    chunks = service.run(plan)
    try:
        yield event("response.created", response=response)
        yield event("response.in_progress", response=response)
        finish_reason = None
        async with contextlib.aclosing(chunks):
            async for _, chunk in chunks:
                if chunk.reasoning and request.include_reasoning:
                    if state["reasoning"] is None:
                        yield open_item("reasoning", _reasoning_item(reasoning_id, "", "in_progress"))
                    reasoning += chunk.reasoning
                    at = {"output_index": state["reasoning"], "item_id": reasoning_id}
                    yield event("response.reasoning_text.delta", **at, content_index=0, delta=chunk.reasoning)
                if chunk.answer:
                    if state["reasoning"] is not None:
                        yield close_reasoning()
                    if state["message"] is None:
                        yield open_message()
                    answer += chunk.answer
                    at = {"output_index": state["message"], "item_id": message_id}
                    yield event("response.output_text.delta", **at, content_index=0, delta=chunk.answer, logprobs=[])
                finish_reason = chunk.finish_reason or finish_reason
        if state["reasoning"] is not None:
            yield close_reasoning()
        if state["message"] is None:
            yield open_message()  # an empty answer is still a message
        index = state["message"]
        at = {"output_index": index, "item_id": message_id}
        output[index] = _message_item(message_id, answer, "completed")
        yield event("response.output_text.done", **at, content_index=0, text=answer, logprobs=[])
        yield event("response.content_part.done", **at, content_index=0, part=_text_part(answer))
        yield event("response.output_item.done", output_index=index, item=output[index])
        final = _finish(response | {"output": output}, plan, finish_reason)
        yield event(f"response.{final['status']}", response=final)
    except APIError as failure:  # the engine failed mid-stream
        yield event("error", code=failure.code, message=failure.message, param=failure.param)
    finally:
        await chunks.aclose()
        service.abandoned(plan)


def closing_event(failure: APIError, sequence_number: int) -> str:
    """What ends a Responses stream that the server's shutdown grace cut short, numbered after the events sent
    (one per blank-line-terminated event, from 0)."""
    body = {
        "type": "error", "sequence_number": sequence_number, "code": failure.code, "message": failure.message,
        "param": None,
    }  # fmt: skip
    return f"event: error\ndata: {json.dumps(body)}\n\n"
