"""The lab task: sums of several numbers, a verifiable multi-step reasoning problem with difficulty levels.

A problem is `What is 33+22+67+48?`. Difficulty grows with the number of terms (3 to 6 two-digit numbers), and a
tiny model cannot add five or six numbers in one shot, so thinking step by step is what makes it right.
(Three-digit terms were tried first: a 0.5 M-parameter model did not learn to copy them reliably within the
build's time budget, so the levels grow by terms instead.)

Splits are disjoint by construction: a problem's split is a function of its text's hash, and each split's
generator keeps only the problems whose hash falls in that split's range. The generator is deterministic for
a (split, seed) pair.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import asdict, dataclass

# level -> (number of terms, digits per term)
LEVELS: dict[int, tuple[int, int]] = {1: (3, 2), 2: (4, 2), 3: (5, 2), 4: (6, 2)}

# hash bucket (0..99) ranges of each split
SPLIT_BUCKETS: dict[str, range] = {"train": range(0, 90), "validation": range(90, 95), "test": range(95, 100)}

# the seed offset per split, so "test" with seed 0 and "train" with seed 0 draw different streams
_SPLIT_SALT = {"train": 11, "validation": 22, "test": 33}


@dataclass(frozen=True)
class Problem:
    id: str
    level: int
    terms: tuple[int, ...]
    answer: int

    @property
    def question(self) -> str:
        return "What is " + "+".join(str(term) for term in self.terms) + "?"

    def to_dict(self) -> dict:
        record = asdict(self)
        record["terms"] = list(self.terms)
        record["question"] = self.question
        return record

    @classmethod
    def from_dict(cls, record: dict) -> Problem:
        return cls(id=record["id"], level=record["level"], terms=tuple(record["terms"]), answer=record["answer"])


def split_of(terms: tuple[int, ...]) -> str:
    digest = hashlib.sha256("+".join(map(str, terms)).encode()).digest()
    bucket = int.from_bytes(digest[:4], "big") % 100
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def random_terms(rng: random.Random, level: int) -> tuple[int, ...]:
    num_terms, digits = LEVELS[level]
    low, high = 10 ** (digits - 1), 10**digits - 1
    return tuple(rng.randint(low, high) for _ in range(num_terms))


def generate_problems(split: str, count: int, seed: int = 0, levels: tuple[int, ...] | None = None) -> list[Problem]:
    """`count` distinct problems of `split`, levels taken in turn (so every level is equally represented)."""
    if split not in SPLIT_BUCKETS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_BUCKETS)}")
    levels = tuple(levels or sorted(LEVELS))
    for level in levels:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level}; expected one of {sorted(LEVELS)}")
    rng = random.Random(seed * 1000 + _SPLIT_SALT[split])
    problems: list[Problem] = []
    seen: set[tuple[int, ...]] = set()
    while len(problems) < count:
        level = levels[len(problems) % len(levels)]
        terms = random_terms(rng, level)
        if terms in seen or split_of(terms) != split:
            continue
        seen.add(terms)
        problems.append(Problem(id=f"{split}-{seed}-{len(problems)}", level=level, terms=terms, answer=sum(terms)))
    return problems


_INTEGER = re.compile(r"-?\d+")


def extract_answer(answer_text: str) -> int | None:
    """The last integer in the answer part of a completion, or None."""
    found = _INTEGER.findall(answer_text.replace(",", ""))
    return int(found[-1]) if found else None


def is_correct(answer_text: str, problem: Problem) -> bool:
    return extract_answer(answer_text) == problem.answer


_QUESTION = re.compile(r"(\d+(?:\s*\+\s*\d+)+)")


def parse_question(text: str) -> tuple[int, ...] | None:
    """The terms of a sum written in free text (`What is 12 + 30 + 7?`), or None."""
    found = _QUESTION.search(text)
    if not found:
        return None
    return tuple(int(part) for part in found.group(1).replace(" ", "").split("+"))
