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


def _held_back(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`: the next delta may complete
    it, so a stream holds it back."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


class ReasoningStream:
    """Splits a streamed completion into reasoning and answer deltas as it arrives, and counts its tokens.

    Feed each engine delta (its text and token ids); get back the new reasoning text and the new answer text.
    Markers never leak into either, even when a marker's text arrives split across deltas. The work per delta
    is proportional to the delta, not to the text so far (a server runs this for every token it streams).

    Token counts follow `split_token_ids` exactly. Text follows `split_text`, except that text before a start
    marker is dropped only while it is whitespace: anything else means the template opened the block in the
    prompt, and is streamed as reasoning at once rather than held back in case a start marker follows.
    """

    def __init__(
        self, start_id: int, end_id: int, markers: ReasoningMarkers = ReasoningMarkers(), start_in_prompt: bool = False
    ):
        self.start_id, self.end_id, self.markers = start_id, end_id, markers
        # before the start marker, then "reasoning", then "answer"; a template that opened the block in the
        # prompt (DeepSeek-R1) starts inside it
        self._text_phase = "reasoning" if start_in_prompt else "before"
        self._pending = ""  # text not yet classified (a possible marker prefix)
        self._token_phase = "reasoning" if start_in_prompt else "before"
        self.reasoning_tokens = 0
        self.answer_tokens = 0
        self.phases: list[str | None] = []  # of the tokens of the last delta: "reasoning", "answer" or None (a marker)

    @property
    def closed(self) -> bool:
        """Whether the end marker has come (as a token)."""
        return self._token_phase == "answer"

    def feed(self, text_delta: str, token_ids: Sequence[int] = ()) -> tuple[str, str]:
        self._count(token_ids)
        self._pending += text_delta
        return self._emit(final=False)

    def flush(self) -> tuple[str, str]:
        """What was held back, once the stream has ended."""
        return self._emit(final=True)

    def _count(self, token_ids: Sequence[int]) -> None:
        self.phases = []
        for token in token_ids:
            if self._token_phase == "answer":
                self.answer_tokens += 1
                self.phases.append("answer")
            elif token == self.end_id:
                self._token_phase = "answer"
                self.phases.append(None)
            elif token == self.start_id and self._token_phase == "before":
                self._token_phase = "reasoning"
                self.reasoning_tokens = 0  # what came before the start marker is neither reasoning nor answer
                self.phases.append(None)
            else:
                self.reasoning_tokens += 1
                self.phases.append("reasoning")

    def _emit(self, final: bool) -> tuple[str, str]:
        start, end = self.markers.start, self.markers.end
        reasoning = answer = ""
        if self._text_phase == "before":
            head = self._pending.lstrip()
            if head.startswith(start):
                self._pending = head[len(start) :]
                self._text_phase = "reasoning"
            elif start.startswith(head) and not final:
                return "", ""  # still whitespace, or the start marker not yet whole
            else:
                self._text_phase = "reasoning"  # the start marker was in the prompt
        if self._text_phase == "reasoning":
            end_at = self._pending.find(end)
            if end_at != -1:
                reasoning = self._pending[:end_at]
                self._pending = self._pending[end_at + len(end) :]
                self._text_phase = "answer"
            else:
                keep = 0 if final else _held_back(self._pending, end)
                reasoning = self._pending[: len(self._pending) - keep]
                self._pending = self._pending[len(self._pending) - keep :]
        if self._text_phase == "answer":
            answer, self._pending = self._pending, ""
        return reasoning, answer


class PlainStream:
    """The stream of a completion with no reasoning (a model without markers, or thinking switched off in the
    template): every delta is answer, every token an answer token. Same interface as `ReasoningStream`."""

    reasoning_tokens = 0
    closed = True

    def __init__(self) -> None:
        self.answer_tokens = 0
        self.phases: list[str | None] = []

    def feed(self, text_delta: str, token_ids: Sequence[int] = ()) -> tuple[str, str]:
        self.answer_tokens += len(token_ids)
        self.phases = ["answer"] * len(token_ids)
        return "", text_delta

    def flush(self) -> tuple[str, str]:
        return "", ""
