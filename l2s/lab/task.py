"""The lab task: sums of several numbers, a verifiable multi-step reasoning problem with difficulty levels.

A problem is `What is 33+22+67+48?`: two to four 2-digit numbers (levels 1 to 3). A tiny model cannot add
them in one shot (answering without thinking gets a few percent right), so thinking step by step is what makes
it right. Harder levels were tried and dropped, because the 2-layer model could not learn them within the
build's time budget: 3-digit terms (it miscopied the middle digits) and 5 or 6 terms (it miscopied numbers
from the longer lists: 39% and 10% right); a 4-layer model took twice as long a step. One-digit terms give
too few distinct problems for disjoint splits of 500.

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
LEVELS: dict[int, tuple[int, int]] = {1: (2, 2), 2: (3, 2), 3: (4, 2)}

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
    for level in levels:
        num_terms, digits = LEVELS[level]
        space = (9 * 10 ** (digits - 1)) ** num_terms * len(SPLIT_BUCKETS[split]) / 100
        if count / len(levels) > 0.9 * space:
            raise ValueError(
                f"level {level} has about {space:.0f} distinct {split} problems; asked for {count / len(levels):.0f}"
            )
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
