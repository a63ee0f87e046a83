"""OpenAI chat-completions request and response models.

Fields follow the OpenAI spec's order; the extensions are in a labelled block. Unknown fields are accepted
and ignored (clients send many), but every field we act on is validated here, so a bad request fails with a
400 before it reaches an engine.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_MESSAGES = 256
MAX_CONTENT_CHARS = 100_000


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ThinkingConfig(BaseModel):
    """Anthropic's `thinking` block, accepted as an alias of `thinking_token_budget`."""

    model_config = ConfigDict(extra="allow")
    type: Literal["enabled", "disabled"]
    budget_tokens: int | None = Field(None, ge=0)


Q = "What is 23+58?"
REQUEST_EXAMPLES = [  # shown in /docs, and what schemathesis starts from to reach the engines
    {"model": "lab-long", "messages": [{"role": "user", "content": Q}], "max_tokens": 200},
    {"model": "lab-short", "messages": [{"role": "user", "content": Q}], "stream": True},
    {"model": "lab-long", "messages": [{"role": "user", "content": Q}], "thinking_token_budget": 16, "seed": 1},
    {"model": "auto", "messages": [{"role": "user", "content": Q}], "reasoning_effort": "low"},
]


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": REQUEST_EXAMPLES})

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str = Field(min_length=1, max_length=256, examples=["lab-long", "lab-short", "auto"])
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=16)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    user: str | None = None

    # --- long2short extensions ---
    thinking_token_budget: int | None = Field(None, ge=-1, description="reasoning-token cap; -1 = unlimited")
    include_reasoning: bool = True
    thinking: ThinkingConfig | None = None  # Anthropic-style alias
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="passed to the model's chat template (vLLM's extension), e.g. {'enable_thinking': false}"
    )
    top_k: int | None = Field(None, ge=-1)

    @field_validator("messages")
    @classmethod
    def _bounded_content(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if sum(len(message.text()) for message in messages) > MAX_CONTENT_CHARS:
            raise ValueError(f"messages hold more than {MAX_CONTENT_CHARS} characters")
        return messages

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        if stop == "" or (isinstance(stop, list) and "" in stop):
            raise ValueError("stop sequences must not be empty")
        return stop

    @model_validator(mode="after")
    def _one_budget(self) -> ChatCompletionRequest:
        if self.thinking is not None and self.thinking_token_budget is not None:
            raise ValueError("give either thinking_token_budget or thinking, not both")
        if self.thinking is not None and self.thinking.type == "enabled" and self.thinking.budget_tokens is None:
            raise ValueError("thinking.budget_tokens is required when thinking.type is 'enabled'")
        return self

    def requested_budget(self) -> int | None:
        """The explicit thinking budget (None: not given; −1: unlimited)."""
        if self.thinking is not None:
            return 0 if self.thinking.type == "disabled" else self.thinking.budget_tokens
        return self.thinking_token_budget

    def effort(self) -> str | None:
        return "low" if self.reasoning_effort == "minimal" else self.reasoning_effort

    def max_output_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }


def message(answer: str, reasoning: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"role": "assistant", "content": answer}
    if reasoning is not None:
        body["reasoning_content"] = reasoning
        body["reasoning"] = reasoning
    return body


def delta(answer: str | None = None, reasoning: str | None = None, role: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"role": "assistant"} if role else {}
    if reasoning:
        body["reasoning_content"] = reasoning
        body["reasoning"] = reasoning
    if answer:
        body["content"] = answer
    return body
