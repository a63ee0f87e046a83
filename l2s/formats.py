"""The reasoning format of a model: which markers delimit its reasoning, whether its chat template opens the
reasoning block in the prompt (DeepSeek-R1's `<｜Assistant｜><think>\\n`), and whether the template can switch
thinking off (Qwen3's `enable_thinking`). A model with no reasoning markers at all (a plain instruct model) has
no reasoning: all of its output is the answer.

Detected from the tokenizer and the chat template (`detect_format`), overridable per variant; markers must be
single tokens of the tokenizer (budgets and token counts work on token ids), otherwise the model is refused with a
clear message. The server, the offline engine (eval, distill sampling, RL rewards) all split completions with the
format of the model that wrote them (`split_completion`), so "reasoning tokens" means one thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from l2s.reasoning import ReasoningMarkers, split_text, split_token_ids

# tried in turn when a variant names no markers: the first pair that is two single tokens of the tokenizer wins
KNOWN_MARKERS = (ReasoningMarkers("<think>", "</think>"), ReasoningMarkers("<thinking>", "</thinking>"))
THINKING_SWITCHES = ("enable_thinking", "thinking")  # chat-template kwargs that turn reasoning on and off


@dataclass(frozen=True)
class ReasoningFormat:
    markers: ReasoningMarkers | None  # None: the model does not reason; its whole output is the answer
    start_in_prompt: bool = False  # the chat template ends the prompt inside the reasoning block
    thinking_switch: str | None = None  # the chat-template kwarg that turns thinking off, if the template has one
    start_id: int = -1
    end_id: int = -1

    @property
    def reasons(self) -> bool:
        return self.markers is not None


PLAIN = ReasoningFormat(markers=None)


def single_token_id(tokenizer, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def _render(tokenizer, **kwargs) -> str:
    messages = [{"role": "user", "content": "Hi"}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)


def detect_format(
    tokenizer,
    markers: ReasoningMarkers | None = None,
    start_in_prompt: bool | None = None,
    reasons: bool | None = None,
) -> ReasoningFormat:
    """The format of the model behind `tokenizer`. `markers`, `start_in_prompt` and `reasons` override what is
    detected (a variant's config); markers that are not single tokens are refused (ValueError)."""
    if reasons is False:
        return PLAIN
    if markers is not None:
        ids = [single_token_id(tokenizer, marker) for marker in (markers.start, markers.end)]
        if None in ids:
            raise ValueError(
                f"reasoning markers {markers.start!r} / {markers.end!r} are not single tokens of this tokenizer "
                "(budgets and reasoning-token counts need them as tokens): add them as tokens, or name others"
            )
    else:
        for candidate in KNOWN_MARKERS:
            ids = [single_token_id(tokenizer, marker) for marker in (candidate.start, candidate.end)]
            if None not in ids:
                markers = candidate
                break
        else:
            if reasons:
                raise ValueError("no reasoning markers found among the tokenizer's tokens: name them in the config")
            return PLAIN
    default = _render(tokenizer)
    if start_in_prompt is None:
        start_in_prompt = default.rstrip().endswith(markers.start)
    switch = next(
        (name for name in THINKING_SWITCHES if _render(tokenizer, **{name: False}) != default),
        None,
    )
    return ReasoningFormat(markers, start_in_prompt, switch, start_id=ids[0], end_id=ids[1])


@dataclass(frozen=True)
class SplitCompletion:
    reasoning: str
    answer: str
    reasoning_tokens: int
    answer_tokens: int
    closed: bool  # the reasoning ended (always, for a model without reasoning)


def split_completion(fmt: ReasoningFormat, text: str, token_ids: Sequence[int]) -> SplitCompletion:
    """A completion's reasoning and answer, text and tokens, in `fmt`."""
    if not fmt.reasons:
        return SplitCompletion("", text, 0, len(token_ids), True)
    ids = split_token_ids(token_ids, fmt.start_id, fmt.end_id, start_in_prompt=fmt.start_in_prompt)
    parts = split_text(text, fmt.markers)
    return SplitCompletion(parts.reasoning, parts.answer, ids.reasoning_tokens, ids.answer_tokens, ids.closed)
