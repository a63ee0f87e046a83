"""Which samples the distill methods learn from (SPEC §3.3, §3.4), as plain functions of one problem's k
samples, so they are tested on hand-made groups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Scored(Protocol):
    correct: bool

    @property
    def length(self) -> int: ...


S = TypeVar("S", bound=Scored)


def shortest_correct(samples: Sequence[S]) -> S | None:
    """The shortest correct sample (the earliest drawn among equally short ones), or None if none is correct."""
    correct = [sample for sample in samples if sample.correct]
    return min(correct, key=lambda sample: sample.length) if correct else None


def dpo_pairs(samples: Sequence[S], long_ratio: float = 1.5, max_pairs: int | None = None) -> list[tuple[S, S]]:
    """(chosen, rejected) pairs: chosen is the shortest correct sample; rejected are the wrong samples longer
    than it and the correct samples at least `long_ratio` times as long."""
    chosen = shortest_correct(samples)
    if chosen is None:
        return []
    rejected = [
        sample
        for sample in samples
        if sample is not chosen
        and (
            (not sample.correct and sample.length > chosen.length)
            or (sample.correct and sample.length >= long_ratio * chosen.length)
        )
    ]
    rejected.sort(key=lambda sample: -sample.length)  # the longest first: the clearest preference
    return [(chosen, sample) for sample in rejected[:max_pairs]]
