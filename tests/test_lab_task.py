import json
import random

import pytest

from l2s.lab.task import LEVELS, Problem, extract_answer, generate_problems, is_correct, parse_question, split_of
from l2s.lab.traces import LongTraceOptions, column_addition, completion, long_reasoning, short_reasoning
from l2s.reasoning import split_text


def test_generator_is_deterministic_and_splits_are_disjoint():
    train = generate_problems("train", 3000, seed=0)
    assert train == generate_problems("train", 3000, seed=0)
    test = generate_problems("test", 500, seed=0)
    validation = generate_problems("validation", 500, seed=0)
    keys = [{p.terms for p in split} for split in (train, test, validation)]
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    assert all(split_of(p.terms) == "test" for p in test)
    assert len(keys[1]) == 500  # distinct within a split


def test_levels_are_balanced_and_shaped():
    problems = generate_problems("test", 100 * len(LEVELS), seed=3)
    for level, (terms, digits) in LEVELS.items():
        of_level = [p for p in problems if p.level == level]
        assert len(of_level) == 100
        assert all(len(p.terms) == terms and all(len(str(t)) == digits for t in p.terms) for p in of_level)
        assert all(p.answer == sum(p.terms) for p in of_level)


def test_bad_split_or_level():
    with pytest.raises(ValueError):
        generate_problems("dev", 1)
    with pytest.raises(ValueError):
        generate_problems("test", 1, levels=(9,))


def test_verifier():
    problem = Problem(id="x", level=1, terms=(10, 20, 30), answer=60)
    assert is_correct("The answer is 60.", problem)
    assert is_correct("59? no: 60", problem)  # the last number counts
    assert not is_correct("The answer is 61.", problem)
    assert not is_correct("", problem)
    assert extract_answer("1,234") == 1234
    assert parse_question("What is 12 + 30+7?") == (12, 30, 7)
    assert parse_question("hello") is None


def test_column_addition():
    assert column_addition(717, 198) == "717+198: 7+8=15, 1+9+1=11, 7+1+1=9, so 915."
    assert column_addition(995, 7) == "995+7: 5+7=12, 9+0+1=10, 9+0+1=10, so 1002."


def test_traces_are_correct_and_long_ones_vary():
    problem = generate_problems("train", 4, seed=1, levels=(max(LEVELS),))[0]
    rng = random.Random(0)
    long_texts = [completion(problem, "long", rng) for _ in range(50)]
    for text in long_texts + [completion(problem, "short", rng), completion(problem, "none", rng)]:
        split = split_text(text)
        assert split.closed and is_correct(split.answer, problem)
    assert len({len(t) for t in long_texts}) > 5  # lengths vary across samples of one problem
    assert min(len(t) for t in long_texts) < 0.6 * max(len(t) for t in long_texts)
    assert split_text(completion(problem, "none", rng)).reasoning == ""
    assert short_reasoning(problem).count(" = ") == len(problem.terms) - 1
    assert short_reasoning(problem).endswith(f"= {problem.answer}")
    # with no optional part, a long trace is the worked sum alone: one expression and one column line a step
    bare = long_reasoning(problem, rng, LongTraceOptions(plan=0, check=0, again=0, redo=0)).splitlines()
    assert len(bare) == 2 * (len(problem.terms) - 1) and bare[-1].endswith(f"so {problem.answer}.")


def test_asking_for_more_problems_than_a_level_has_is_an_error():
    with pytest.raises(ValueError, match="distinct test problems"):
        generate_problems("test", 3000)


def test_first_error_names_the_first_wrong_line_of_the_worked_sum():
    from l2s.lab.errors import first_error, problems_by_id

    problem = Problem(id="test-0-0", level=3, terms=(39, 12, 14, 93), answer=158)
    right = long_reasoning(problem, random.Random(1))
    assert first_error(problem, right, "The answer is 158.") is None
    assert first_error(problem, right, "The answer is 168.") == "answer"
    lines = "39+12+14+93\n39+12: 9+2=11, 3+1+1=5, so 51.\n{}\n{}\n132+93: 2+3=5, 3+9=12, 1+0+1=2, so 225."
    # a digit of the sum just written (51) lands in the next number: 14 -> 54
    assert first_error(problem, lines.format("51+54+93", "51+54: 1+4=5, 5+5=10, so 105."), "") == "copy"
    assert first_error(problem, lines.format("51+14+93", "51+41: 1+1=2, 5+4=9, so 92."), "") == "copy"
    assert first_error(problem, lines.format("51+14+93", "51+14: 1+4=5, 5+1+1=7, so 75."), "") == "column"
    assert first_error(problem, lines.format("51+14+93", "51+14: 1+4=5, 5+1=6, so 66."), "") == "total"
    assert first_error(problem, "39+12+14+93\n39+12: 9+2=11, 3+1+1=5, so 51.", "The answer is 158.") == "unfinished"
    assert "Check:" in right  # (checks and repeats are off the main chain)
    assert problems_by_id({"test-0-0", "test-0-2"})["test-0-2"] == generate_problems("test", 3, seed=0)[2]


def test_lab_errors_command_writes_its_table(tmp_path, capsys):
    from l2s.cli import main

    problem = generate_problems("test", 1, seed=0)[0]
    right = long_reasoning(problem, random.Random(0), LongTraceOptions(plan=1, check=0, again=0, redo=0))
    samples = tmp_path / "samples.jsonl"
    rows = [
        {"model": "m", "level": problem.level, "problem_id": problem.id, "correct": True, "reasoning": right,
         "answer": f"The answer is {problem.answer}."},
        {"model": "m", "level": problem.level, "problem_id": problem.id, "correct": False, "reasoning": right,
         "answer": f"The answer is {problem.answer + 1}."},
    ]  # fmt: skip
    samples.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["lab", "errors", str(samples), "--out", str(tmp_path / "errors.md")]) == 0
    written = (tmp_path / "errors.md").read_text()
    assert written.strip() == capsys.readouterr().out.strip()
    assert f"| m | {problem.level} | 2 | 1 | 0 | 0 | 0 | 1 | 0 |" in written  # the one wrong: its answer
    # both samples share one trace: the one wrong falls on the side of each habit that trace is on
    # (the trace has a plan and no repeated step)
    assert written.splitlines()[2].endswith("| 1 of 2 | 0 of 0 | 0 of 0 | 1 of 2 |")

    # the same eval directory after the model was retrained under its name: only the new weights' samples count
    retrained = [{**row, "model_version": "new", "correct": True} for row in rows]
    older = [{**row, "model_version": "old"} for row in rows]
    samples.write_text("".join(json.dumps(row) + "\n" for row in older + retrained))
    assert main(["lab", "errors", str(samples), "--out", str(tmp_path / "errors.md")]) == 0
    assert f"| m | {problem.level} | 2 | 0 |" in (tmp_path / "errors.md").read_text()
