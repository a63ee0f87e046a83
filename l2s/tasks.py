"""Tasks: the problems every command samples, trains and evaluates on, whatever their source.

A problem has an id, the question, a reference answer, a difficulty label and the name of its verifier, so it
can be written to JSON (RL keeps unfinished rollouts in its checkpoints) and checked anywhere. A task spec names
where the problems come from:

    lab                          the lab's sums (the caller picks the split: train, validation or test)
    lab:LEVEL                    one level of them
    jsonl:PATH                   one {"question", "answer", optional "level", "id"} object per line
    hf:NAME[:CONFIG][@SPLIT]     a `datasets` dataset: a hub id (read from the local Hugging Face cache when there
                                 is no network) or a directory written by `Dataset.save_to_disk`

Hugging Face datasets are read through `HF_FIELDS`, the field mapping of the common math sets (gsm8k's answers
end in `#### N`; MATH-500 has `problem`, `answer`, `level`); other datasets need `question`/`problem` and
`answer` fields. Answers other than the lab's are checked with math-verify.

The prompt policy (system prompt, instruction after the question) is applied by `PromptPolicy.messages`, through
the model's own chat template downstream.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from l2s.lab.task import LEVELS, extract_answer, generate_problems

R1_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class TaskProblem:
    id: str
    question: str
    answer: str
    level: str = "all"  # difficulty label: "1".."3" for the lab, the dataset's own where it has one
    verifier: str = "math"  # a key of VERIFIERS

    def is_correct(self, answer_text: str) -> bool:
        """Whether the answer part of a completion (after the reasoning) gives this problem's answer."""
        return VERIFIERS[self.verifier](answer_text, self.answer)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> TaskProblem:
        return cls(**record)


def _integer_verifier(answer_text: str, reference: str) -> bool:
    """The lab's rule: the last integer of the answer is the sum."""
    return extract_answer(answer_text) == int(reference)


@lru_cache(maxsize=4096)
def _gold(reference: str):
    from math_verify import parse

    return parse(reference if "$" in reference or "\\" in reference else f"${reference}$")


def _math_verifier(answer_text: str, reference: str) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(_gold(reference), parse(answer_text)))
    except Exception:  # math-verify raises on unparseable text: that answer is wrong, not an error
        return False


VERIFIERS = {"integer": _integer_verifier, "math": _math_verifier}


class PromptPolicy(BaseModel):
    """What is sent around a question: an optional system prompt and an optional instruction after the question
    (DeepSeek-R1's evaluations append `R1_INSTRUCTION`). Both empty: the question alone, as the lab is trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    system_prompt: str | None = None
    instruction: str | None = None

    def messages(self, question: str) -> list[dict]:
        content = f"{question}\n{self.instruction}" if self.instruction else question
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": "user", "content": content}]


# --- Hugging Face datasets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldMap:
    question: str
    answer: str
    level: str | None = None
    id: str | None = None
    answer_after: str | None = None  # the reference is what follows this marker (gsm8k: "####")


# keyed by the dataset name without its owner, lower case
HF_FIELDS: dict[str, FieldMap] = {
    "gsm8k": FieldMap(question="question", answer="answer", answer_after="####"),
    "math-500": FieldMap(question="problem", answer="answer", level="level", id="unique_id"),
    "aime_2024": FieldMap(question="Problem", answer="Answer", id="ID"),
    "aimo-validation-aime": FieldMap(question="problem", answer="answer", id="id"),
}


def field_map(name: str, columns: list[str]) -> FieldMap:
    known = HF_FIELDS.get(name.rstrip("/").split("/")[-1].lower())
    if known:
        return known
    question = next((c for c in ("question", "problem", "prompt") if c in columns), None)
    if question is None or "answer" not in columns:
        raise ValueError(
            f"dataset {name}: no field mapping known and no question/problem + answer fields (it has {columns}); "
            "convert it to jsonl:PATH with question and answer"
        )
    return FieldMap(
        question=question,
        answer="answer",
        level="level" if "level" in columns else None,
        id="id" if "id" in columns else None,
    )


def _hf_rows(name: str, config: str | None, split: str):
    import datasets

    local = Path(name)
    if local.is_dir() and ((local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file()):
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"dataset {name} has no split {split!r} (it has {sorted(loaded)})")
            loaded = loaded[split]
        return loaded
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as error:  # no network and no cached copy, an unknown name, a missing split...
        raise ValueError(
            f"cannot load dataset {name}{':' + config if config else ''}@{split}: {type(error).__name__}: {error} "
            "(offline, a hub dataset must already be in the Hugging Face cache; or pass a save_to_disk directory)"
        ) from None


def _hf_problems(argument: str, default_split: str) -> list[TaskProblem]:
    body, _, split = argument.partition("@")
    name, _, config = body.partition(":")
    if not name:
        raise ValueError("hf: needs a dataset name, as in hf:openai/gsm8k:main@test")
    split = split or default_split
    rows = _hf_rows(name, config or None, split)
    fields = field_map(name, list(rows.column_names))
    problems = []
    for index, row in enumerate(rows):
        answer = str(row[fields.answer])
        if fields.answer_after:
            answer = answer.rsplit(fields.answer_after, 1)[-1].strip().replace(",", "")
        problems.append(
            TaskProblem(
                id=str(row[fields.id]) if fields.id else f"{Path(name).name}@{split}-{index}",
                question=str(row[fields.question]),
                answer=answer,
                level=str(row[fields.level]) if fields.level else "all",
            )
        )
    return problems


# --- the registry of specs -----------------------------------------------------------------------------------


def _lab_problems(argument: str, split: str, count: int | None, seed: int) -> list[TaskProblem]:
    levels = None
    if argument:
        if not argument.isdigit() or int(argument) not in LEVELS:
            raise ValueError(f"lab level must be one of {sorted(LEVELS)}, not {argument!r}")
        levels = (int(argument),)
    return [
        TaskProblem(id=p.id, question=p.question, answer=str(p.answer), level=str(p.level), verifier="integer")
        for p in generate_problems(split, count or 500, seed=seed, levels=levels)
    ]


def _jsonl_problems(argument: str) -> list[TaskProblem]:
    path = Path(argument)
    if not path.is_file():
        raise ValueError(f"no such file: {argument}")
    problems = []
    for number, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path.name} line {number + 1}: not JSON ({error})") from None
        if not isinstance(record, dict) or "question" not in record or "answer" not in record:
            raise ValueError(f"{path.name} line {number + 1}: needs 'question' and 'answer'")
        problems.append(
            TaskProblem(
                id=str(record.get("id", number)),
                question=str(record["question"]),
                answer=str(record["answer"]),
                level=str(record.get("level", "all")),
            )
        )
    return problems


TASK_KINDS = ("lab", "jsonl", "hf")


def load_task(spec: str, split: str = "test", count: int | None = None, seed: int = 0) -> list[TaskProblem]:
    """The problems of `spec`. `split` picks the lab's split, and an hf dataset's when the spec names none;
    `count` caps the number (the lab generates that many, 500 by default; files and datasets give their first
    `count`); `seed` draws the lab's problems."""
    kind, _, argument = spec.partition(":")
    if kind == "lab":
        return _lab_problems(argument, split, count, seed)
    if kind == "jsonl":
        problems = _jsonl_problems(argument)
    elif kind == "hf":
        problems = _hf_problems(argument, split)
    else:
        raise ValueError(f"unknown task {spec!r}: use lab, lab:LEVEL, jsonl:PATH or hf:NAME[:CONFIG][@SPLIT]")
    if not problems:
        raise ValueError(f"task {spec} has no problems")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError(f"task {spec}: problem ids are not unique")
    return problems[:count] if count else problems


def held_out(problem: TaskProblem, fraction: float, salt: str = "holdout") -> bool:
    """Whether `problem` falls in the deterministic hashed hold-out of size `fraction` (by id, any task)."""
    digest = hashlib.sha256(f"{salt}:{problem.id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_holdout(
    problems: list[TaskProblem], fraction: float, salt: str = "holdout"
) -> tuple[list[TaskProblem], list[TaskProblem]]:
    """(kept, held out): one task split into train and validation (or test) the same way on every machine."""
    if not 0 < fraction < 1:
        raise ValueError("a hold-out fraction is between 0 and 1")
    out = [held_out(p, fraction, salt) for p in problems]
    return [p for p, o in zip(problems, out) if not o], [p for p, o in zip(problems, out) if o]


def without(problems: list[TaskProblem], measured: list[TaskProblem]) -> list[TaskProblem]:
    """`problems` minus any whose question is one of `measured`'s (compared without case and spacing): a
    distill run never trains on what its evaluation measures."""

    def key(text: str) -> str:
        return " ".join(text.lower().split())

    seen = {key(p.question) for p in measured}
    return [p for p in problems if key(p.question) not in seen]
