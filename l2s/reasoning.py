"""The reasoning format (SPEC §2): `<think>REASONING</think>ANSWER`.

Every part of the product splits completions with this module, so "reasoning tokens" means one thing
everywhere: the tokens strictly between the start and end markers. A completion with no end marker was cut
off while thinking, so all of it is reasoning (this holds for a completion with no markers at all). A
completion that starts without the start marker (templates such as DeepSeek-R1's put `<think>` in the
prompt) is reasoning up to the end marker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_START = "<think>"
DEFAULT_END = "</think>"


@dataclass(frozen=True)
class ReasoningMarkers:
    """The two strings that open and close the reasoning block of a model's output."""

    start: str = DEFAULT_START
    end: str = DEFAULT_END

    def __post_init__(self) -> None:
        if not self.start or not self.end:
            raise ValueError("reasoning markers must be non-empty strings")
        if self.start == self.end:
            raise ValueError("reasoning start and end markers must differ")


@dataclass(frozen=True)
class SplitText:
    reasoning: str
    answer: str
    closed: bool  # False when the end marker never came (the reasoning was cut off)


@dataclass(frozen=True)
class SplitTokens:
    reasoning_ids: list[int]
    answer_ids: list[int]
    closed: bool

    @property
    def reasoning_tokens(self) -> int:
        return len(self.reasoning_ids)

    @property
    def answer_tokens(self) -> int:
        return len(self.answer_ids)


def split_text(text: str, markers: ReasoningMarkers = ReasoningMarkers()) -> SplitText:
    """Split a completion's text into reasoning and answer.

    >>> split_text("<think>2+2=4</think>4")
    SplitText(reasoning='2+2=4', answer='4', closed=True)
    >>> split_text("<think>2+2=")
    SplitText(reasoning='2+2=', answer='', closed=False)
    """
    start_at = text.find(markers.start)
    end_at = text.find(markers.end)
    if start_at != -1 and (end_at == -1 or start_at < end_at):
        body = text[start_at + len(markers.start) :]
    else:
        body = text  # the start marker was in the prompt (or never came)
    end_at = body.find(markers.end)
    if end_at == -1:
        return SplitText(reasoning=body, answer="", closed=False)
    return SplitText(reasoning=body[:end_at], answer=body[end_at + len(markers.end) :], closed=True)


def split_token_ids(
    token_ids: Sequence[int],
    start_id: int,
    end_id: int,
    start_in_prompt: bool = False,
) -> SplitTokens:
    """Split completion token ids at the reasoning markers (single-token markers).

    `start_in_prompt` says the chat template already opened the block, so the completion begins inside it.
    Tokens before the start marker (if any) and the markers themselves are neither reasoning nor answer.
    """
    ids = list(token_ids)
    body_from = 0
    if not start_in_prompt and start_id in ids:
        start_at = ids.index(start_id)
        if end_id not in ids[:start_at]:
            body_from = start_at + 1
    body = ids[body_from:]
    try:
        end_at = body.index(end_id)
    except ValueError:
        return SplitTokens(reasoning_ids=body, answer_ids=[], closed=False)
    return SplitTokens(reasoning_ids=body[:end_at], answer_ids=body[end_at + 1 :], closed=True)


def count_reasoning_tokens(token_ids: Sequence[int], start_id: int, end_id: int) -> int:
    return split_token_ids(token_ids, start_id, end_id).reasoning_tokens


def marker_token_ids(tokenizer, markers: ReasoningMarkers = ReasoningMarkers()) -> tuple[int, int]:
    """The ids of the two markers in `tokenizer`; each marker must be exactly one token."""
    ids = []
    for marker in (markers.start, markers.end):
        encoded = tokenizer.encode(marker, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"reasoning marker {marker!r} is {len(encoded)} tokens in this tokenizer, not 1")
        ids.append(encoded[0])
    return ids[0], ids[1]


def _partial_marker_suffix(text: str, markers: ReasoningMarkers) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a marker (it may be completed by the
    next delta, so a stream holds it back)."""
    longest = 0
    for marker in (markers.start, markers.end):
        for size in range(1, len(marker)):
            if text.endswith(marker[:size]):
                longest = max(longest, size)
    return longest


class ReasoningStream:
    """Splits a streamed completion into reasoning and answer deltas as it arrives.

    Feed each engine delta (its text and token ids); get back the new reasoning text and the new answer text.
    Markers never leak into either, even when a marker's text arrives split across deltas.
    """

    def __init__(self, start_id: int, end_id: int, markers: ReasoningMarkers = ReasoningMarkers()):
        self.start_id, self.end_id, self.markers = start_id, end_id, markers
        self.text = ""
        self.token_ids: list[int] = []
        self._sent_reasoning = 0
        self._sent_answer = 0

    def feed(self, text_delta: str, token_ids: Sequence[int] = ()) -> tuple[str, str]:
        self.text += text_delta
        self.token_ids.extend(token_ids)
        return self._emit(final=False)

    def flush(self) -> tuple[str, str]:
        """What was held back, once the stream has ended."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> tuple[str, str]:
        split = split_text(self.text, self.markers)
        reasoning, answer = split.reasoning, split.answer
        if not final:
            if split.closed:
                answer = answer[: len(answer) - _partial_marker_suffix(answer, self.markers)]
            else:
                reasoning = reasoning[: len(reasoning) - _partial_marker_suffix(self.text, self.markers)]
        reasoning_delta = reasoning[self._sent_reasoning :] if len(reasoning) > self._sent_reasoning else ""
        answer_delta = answer[self._sent_answer :] if len(answer) > self._sent_answer else ""
        self._sent_reasoning = max(self._sent_reasoning, len(reasoning))
        self._sent_answer = max(self._sent_answer, len(answer))
        return reasoning_delta, answer_delta

    @property
    def split(self) -> SplitTokens:
        return split_token_ids(self.token_ids, self.start_id, self.end_id)
