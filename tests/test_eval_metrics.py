import json

import pytest

from eval.calibration import build_calibration
from eval.metrics import aes, percentile, summarize, wilson_interval
from eval.report import _pareto, build_results
from eval.runner import Condition, EvalSettings, _todo, load_done
from l2s.tasks import TaskProblem


def _sample(correct, reasoning, answer=5, **extra):
    return {"correct": correct, "reasoning_tokens": reasoning, "answer_tokens": answer, **extra}


def test_summary_by_hand():
    samples = [_sample(True, 10), _sample(False, 20), _sample(True, 30), _sample(True, 40)]
    s = summarize(samples, budget=25)
    assert s["accuracy"] == 0.75
    assert s["mean_reasoning_tokens"] == 25 and s["median_reasoning_tokens"] == 25
    assert s["p90_reasoning_tokens"] == pytest.approx(37.0)  # 30 + 0.7 * 10
    assert s["mean_answer_tokens"] == 5
    assert s["tokens_per_correct"] == pytest.approx((100 + 20) / 3)
    assert s["budget_violations"] == 2  # 30 and 40 exceed 25
    assert s["mean_relative_length_error"] == pytest.approx((15 + 5 + 5 + 15) / 25 / 4)


def test_no_correct_answer_has_no_tokens_per_correct():
    assert summarize([_sample(False, 3)])["tokens_per_correct"] is None


def test_wilson_interval_at_the_edges():
    low, high = wilson_interval(50, 50)
    assert high == 1.0 and 0.92 < low < 0.94  # all correct: the interval still has width
    low, high = wilson_interval(0, 50)
    assert low == 0.0 and 0.06 < high < 0.08
    low, high = wilson_interval(25, 50)
    assert low == pytest.approx(0.3664, abs=1e-3) and high == pytest.approx(0.6336, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 0.0)


def test_aes_on_both_sides_of_zero():
    # shorter and as accurate: ΔL = 0.6, ΔA = 0
    assert aes(0.9, 40, 0.9, 100) == pytest.approx(0.6)
    # shorter and more accurate: ΔL = 0.5, ΔA = +0.1/0.8 = 0.125, weight 3
    assert aes(0.9, 50, 0.8, 100) == pytest.approx(0.5 + 3 * 0.125)
    # shorter but less accurate: ΔL = 0.5, ΔA = -0.2/0.8 = -0.25, weight 5 -> negative
    assert aes(0.6, 50, 0.8, 100) == pytest.approx(0.5 - 5 * 0.25)
    assert aes(0.5, 10, 0.0, 100) is None


def test_percentile_matches_numpy_linear():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 90) == 5
    assert percentile([], 50) == 0.0


def test_pareto_frontier():
    points = [(10, 50, "a"), (20, 40, "b"), (30, 90, "c"), (5, 50, "d")]
    assert [p[2] for p in _pareto(points)] == ["d", "c"]


def _record(model, condition, budget, pid, sample, correct, reasoning):
    return {
        "model": model,
        "condition": condition,
        "budget": budget,
        "effort": None,
        "problem_id": pid,
        "level": "1",
        "sample": sample,
        "correct": correct,
        "reasoning_tokens": reasoning,
        "answer_tokens": 2,
    }


def test_results_aes_and_calibration():
    records = [_record("long", "none", None, str(i), 0, True, 100) for i in range(4)]
    records += [_record("long", "16", 16, str(i), 0, i < 2, 16) for i in range(4)]
    records += [_record("short", "none", None, str(i), 0, i < 3, 10 + i) for i in range(4)]
    results = build_results(records, ["long", "short"], reference="long")
    by = {(r["model"], r["condition"]): r for r in results}
    assert [r["condition"] for r in results] == ["16", "none", "none"]  # budgets ascending, unbudgeted last
    assert by[("long", "none")]["aes"] == pytest.approx(0.0)
    short = by[("short", "none")]
    assert short["aes"] == pytest.approx((102 - 13.5) / 102 + 5 * (0.75 - 1) / 1)
    assert short["num_problems"] == 4 and short["num_samples"] == 1
    calibration = build_calibration(records, results, {})
    assert calibration["variants"]["short"]["efforts"] == {"low": 11, "medium": 12, "high": 13}
    assert calibration["variants"]["long"]["budgets"][0] == {"budget": 16, "accuracy": 0.5, "mean_reasoning_tokens": 16}


def test_resume_skips_done_samples(tmp_path):
    problems = [TaskProblem(id=str(i), question="q", answer="1", level="1") for i in range(3)]
    settings = EvalSettings(models=["m"], problems=problems, conditions=[Condition()], samples=2)
    path = tmp_path / "samples.jsonl"
    done_records = [
        _record("m", "none", None, "0", 0, True, 1),
        _record("m", "none", None, "0", 1, True, 1),
        _record("m", "none", None, "1", 0, True, 1),
    ]
    path.write_text("\n".join(json.dumps(r) for r in done_records) + '\n{"cut off')  # an interrupted last line
    done = load_done(path)
    assert len(done) == 3
    todo = _todo(settings, "m", Condition(), done)
    assert [(p.id, i) for p, i in todo] == [("1", 1), ("2", 0), ("2", 1)]
    assert _todo(settings, "m", Condition(budget=8), done)[0][0].id == "0"  # other conditions are not done


def test_samples_of_a_rebuilt_model_are_not_reused(tmp_path):
    """The resume key holds the weights' version: a model rebuilt under the same name is evaluated afresh."""
    import os

    from eval.runner import model_version

    weights = tmp_path / "lab-long" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"old weights")
    before = model_version(str(weights.parent))
    assert before == model_version(str(weights.parent))
    weights.write_bytes(b"new weights!")
    os.utime(weights, ns=(1, 10**18))
    assert model_version(str(weights.parent)) != before
    assert model_version("lab-long") is None  # a served name: nothing to tell
