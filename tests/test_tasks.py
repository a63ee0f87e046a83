"""The task layer (l2s/tasks.py): every spec kind, verifiers, hold-outs and the prompt policy, with no network."""

import json

import pytest

from l2s.lab.task import generate_problems
from l2s.tasks import R1_INSTRUCTION, PromptPolicy, TaskProblem, load_task, split_holdout, without


def test_lab_task_is_the_lab_split():
    lab = load_task("lab:2", count=10)
    assert len(lab) == 10 and {p.level for p in lab} == {"2"}
    assert lab[0].is_correct(f"The answer is {lab[0].answer}.") and not lab[0].is_correct("The answer is 1.")
    train = load_task("lab", split="train", count=30, seed=101)
    assert [(p.id, p.question) for p in train] == [(p.id, p.question) for p in generate_problems("train", 30, seed=101)]
    with pytest.raises(ValueError, match="lab level"):
        load_task("lab:9")


def test_jsonl_task_uses_math_verify(tmp_path):
    fixture = tmp_path / "math.jsonl"
    fixture.write_text(
        '{"question": "1/2 + 1/4?", "answer": "\\\\frac{3}{4}"}\n\n'
        '{"question": "2+2", "answer": "4", "level": "easy"}\n'
    )
    problems = load_task(f"jsonl:{fixture}")
    assert problems[0].is_correct("The answer is $\\frac{3}{4}$") and problems[0].is_correct("$0.75$")
    assert not problems[0].is_correct("1/3") and not problems[0].is_correct("")
    assert problems[1].is_correct("so the result is \\boxed{4}") and not problems[1].is_correct("5")
    assert problems[1].level == "easy" and problems[0].level == "all"
    assert TaskProblem.from_dict(json.loads(json.dumps(problems[0].to_dict()))) == problems[0]
    (tmp_path / "bad.jsonl").write_text('{"question": "no answer"}\n')
    with pytest.raises(ValueError, match="line 1"):
        load_task(f"jsonl:{tmp_path / 'bad.jsonl'}")
    with pytest.raises(ValueError, match="unknown task"):
        load_task("gsm8k")


def test_hf_task_from_a_saved_dataset(tmp_path):
    """gsm8k's `#### N` answers and MATH-500's fields, read from directories written by save_to_disk."""
    from datasets import Dataset, DatasetDict

    gsm8k = tmp_path / "gsm8k"
    DatasetDict(
        {
            "train": Dataset.from_dict(
                {"question": ["Tom has 3 apples and buys 4. How many?"], "answer": ["3+4=7\n#### 7"]}
            ),
            "test": Dataset.from_dict({"question": ["Q1", "Q2"], "answer": ["so\n#### 1,200", "#### 5"]}),
        }
    ).save_to_disk(gsm8k)
    train = load_task(f"hf:{gsm8k}", split="train")
    assert [p.answer for p in train] == ["7"] and train[0].is_correct("\\boxed{7}")
    test = load_task(f"hf:{gsm8k}@test")
    assert [p.answer for p in test] == ["1200", "5"] and test[0].id == "gsm8k@test-0"
    math500 = tmp_path / "MATH-500"
    Dataset.from_dict(
        {
            "problem": ["What is $\\frac12+\\frac14$?"],
            "answer": ["\\frac{3}{4}"],
            "level": [2],
            "unique_id": ["a/1.json"],
        }
    ).save_to_disk(math500)
    (problem,) = load_task(f"hf:{math500}")
    assert (problem.id, problem.level, problem.answer) == ("a/1.json", "2", "\\frac{3}{4}")
    with pytest.raises(ValueError, match="no split"):
        load_task(f"hf:{gsm8k}@validation")


def test_hf_task_offline_names_the_dataset(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match="cannot load dataset no-such-owner/no-such-set@test"):
        load_task("hf:no-such-owner/no-such-set")


def test_holdout_is_deterministic_and_disjoint():
    problems = load_task("lab", split="train", count=400)
    kept, held = split_holdout(problems, 0.1)
    assert len(kept) + len(held) == 400 and 20 <= len(held) <= 60
    assert not {p.id for p in kept} & {p.id for p in held}
    assert split_holdout(problems, 0.1) == (kept, held)
    assert without(problems, held) == kept
    twin = TaskProblem(id="x", question=held[0].question.upper() + "  ", answer="0")
    assert without([twin], held) == []


def test_prompt_policy():
    assert PromptPolicy().messages("What is 1+2?") == [{"role": "user", "content": "What is 1+2?"}]
    r1 = PromptPolicy(system_prompt="Be brief.", instruction=R1_INSTRUCTION).messages("Q")
    assert r1 == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q\n{R1_INSTRUCTION}"}]


@pytest.mark.slow  # it needs the lab's tokenizer (make setup)
def test_a_template_that_drops_the_system_prompt_is_refused(lab_models):
    """The lab's chat template has no system role: a system prompt would vanish, so it is refused, loudly."""
    from transformers import AutoTokenizer

    from l2s.generation import chat_prompt_ids, check_template_keeps

    tokenizer = AutoTokenizer.from_pretrained(lab_models / "lab-long")
    plain = PromptPolicy().messages("What is 1+2?")
    check_template_keeps(tokenizer, plain)
    assert chat_prompt_ids(tokenizer, plain) == chat_prompt_ids(tokenizer, "What is 1+2?")
    check_template_keeps(tokenizer, PromptPolicy(instruction="Be brief.").messages("What is 1+2?"))
    with pytest.raises(ValueError, match="drops system messages"):
        check_template_keeps(tokenizer, PromptPolicy(system_prompt="Be brief.").messages("What is 1+2?"))


def test_rl_validation_never_overlaps_training(tmp_path):
    from distill.rl import RLRecipe
    from distill.validation import validation_split

    rows = [{"question": f"What is {a}+{a + 1}?", "answer": str(2 * a + 1)} for a in range(10, 810)]
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    pool, held = validation_split(RLRecipe(model="m", task=f"jsonl:{data}", validation_problems=16))
    assert len(held) == 16 and len(pool) + 16 < 800 and not {p.id for p in pool} & {p.id for p in held}
    # a validation task loses the questions it shares with the training pool: here all of them, which is an error
    with pytest.raises(ValueError, match="no validation problems left"):
        validation_split(
            RLRecipe(model="m", task=f"jsonl:{data}", validation_task=f"jsonl:{data}", validation_problems=16)
        )
