import random

import pytest

from l2s.reasoning import ReasoningMarkers, ReasoningStream, marker_token_ids, split_text, split_token_ids

S, E = 1, 2  # marker ids in the token tests


@pytest.mark.parametrize(
    "text, reasoning, answer, closed",
    [
        ("<think>a b</think>c", "a b", "c", True),
        ("<think></think>42", "", "42", True),
        ("<think>cut off", "cut off", "", False),  # unclosed: all reasoning
        ("no markers at all", "no markers at all", "", False),  # SPEC §2: no </think> means all reasoning
        ("started in prompt</think>answer", "started in prompt", "answer", True),
        ("<think>x</think>y</think>z", "x", "y</think>z", True),  # only the first end marker closes
        ("pre<think>x</think>y", "x", "y", True),  # text before the start marker is neither
        ("<think>", "", "", False),
        ("", "", "", False),
    ],
)
def test_split_text(text, reasoning, answer, closed):
    split = split_text(text)
    assert (split.reasoning, split.answer, split.closed) == (reasoning, answer, closed)


def test_split_text_custom_markers():
    markers = ReasoningMarkers(start="<reason>", end="</reason>")
    split = split_text("<reason>r</reason><think>a", markers)
    assert (split.reasoning, split.answer) == ("r", "<think>a")


def test_markers_validated():
    with pytest.raises(ValueError):
        ReasoningMarkers(start="", end="x")
    with pytest.raises(ValueError):
        ReasoningMarkers(start="x", end="x")


@pytest.mark.parametrize(
    "ids, reasoning, answer, closed",
    [
        ([S, 7, 8, E, 9], [7, 8], [9], True),
        ([S, E, 9, 9], [], [9, 9], True),
        ([S, 7, 8], [7, 8], [], False),
        ([7, 8, E, 9], [7, 8], [9], True),
        ([7, 8], [7, 8], [], False),
        ([], [], [], False),
        ([S, 7, E, 9, E], [7], [9, E], True),
        ([S, 7, E, S, 9], [7], [S, 9], True),
    ],
)
def test_split_token_ids(ids, reasoning, answer, closed):
    split = split_token_ids(ids, S, E)
    assert (split.reasoning_ids, split.answer_ids, split.closed) == (reasoning, answer, closed)
    assert split.reasoning_tokens == len(reasoning) and split.answer_tokens == len(answer)


def test_split_token_ids_start_in_prompt():
    split = split_token_ids([S, 7, E, 9], S, E, start_in_prompt=True)
    assert split.reasoning_ids == [S, 7]


class _FakeTokenizer:
    def encode(self, text, add_special_tokens=False):
        return {"<think>": [5], "</think>": [6], "<r>": [1, 2]}[text]


def test_marker_token_ids():
    assert marker_token_ids(_FakeTokenizer()) == (5, 6)
    with pytest.raises(ValueError, match="not 1"):
        marker_token_ids(_FakeTokenizer(), ReasoningMarkers(start="<r>", end="</think>"))


def _chunked(items, rng):
    """`items` cut into random consecutive pieces (a stream's deltas)."""
    pieces, at = [], 0
    while at < len(items):
        size = rng.randint(1, 4)
        pieces.append(items[at : at + size])
        at += size
    return pieces


def test_stream_counts_match_split_token_ids_for_any_chunking():
    rng = random.Random(0)
    for _ in range(2000):
        ids = [rng.choice([S, E, 7, 8, 9]) for _ in range(rng.randint(0, 12))]
        stream = ReasoningStream(S, E)
        for piece in _chunked(ids, rng):
            stream.feed("", piece)
        split = split_token_ids(ids, S, E)
        assert (stream.reasoning_tokens, stream.answer_tokens, stream.closed) == (
            split.reasoning_tokens,
            split.answer_tokens,
            split.closed,
        ), ids


def test_stream_text_matches_split_text_for_any_chunking():
    rng = random.Random(1)
    words = ["<think>", "</think>", "a", "b c", "<", "</", "think>", ">", " ", "\n"]
    for _ in range(2000):
        text = "".join(rng.choice(words) for _ in range(rng.randint(0, 10)))
        if text.lstrip() and not text.lstrip().startswith("<think>") and "<think>" in text.split("</think>")[0]:
            continue  # text before a start marker: streamed as reasoning at once (see ReasoningStream)
        stream = ReasoningStream(S, E)
        reasoning = answer = ""
        for piece in _chunked(text, rng):
            r, a = stream.feed(piece)
            reasoning, answer = reasoning + r, answer + a
        r, a = stream.flush()
        split = split_text(text)
        assert (reasoning + r, answer + a) == (split.reasoning, split.answer), repr(text)
