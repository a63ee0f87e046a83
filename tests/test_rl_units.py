"""The RL method's loss, gradient and rewards on hand-computed cases (SPEC §3.1)."""

import json
import math

import pytest
import torch

from distill.rewards import baseline, length_rewards, total_rewards
from distill.rl import opmd_loss


def test_length_reward_groups():
    assert length_rewards([10, 10, 10], [True, False, True]) == [0.0, 0.0, 0.0]  # all equal lengths
    assert length_rewards([10, 20, 30], [True, True, True]) == [0.5, 0.0, -0.5]
    assert length_rewards([10, 20, 30], [False, False, False]) == [0.0, 0.0, -0.5]  # all wrong: never a bonus
    assert length_rewards([10, 30, 20, 15], [False, True, True, True]) == [0.0, -0.5, 0.0, 0.25]  # mixed
    with pytest.raises(ValueError):
        length_rewards([1], [True, False])


def test_total_rewards_and_warmup():
    assert total_rewards([10, 30], [True, False], 0.0) == [1.0, 0.0]
    assert total_rewards([10, 30], [True, False], 2.0) == [2.0, -1.0]
    # gated: a group with a wrong sample trains on correctness alone; an all-correct group keeps its length reward
    assert total_rewards([10, 30], [True, False], 2.0, only_all_correct=True) == [1.0, 0.0]
    assert total_rewards([10, 30], [True, True], 2.0, only_all_correct=True) == [2.0, 0.0]


def test_baselines():
    assert baseline([1.0, 0.0, 0.5], tau=0.5) == 0.5
    exact = baseline([1.0, 0.0], tau=0.5, exact=True)
    assert exact == pytest.approx(0.5 * math.log((math.exp(2) + 1) / 2))
    assert baseline([0.3, 0.3], tau=0.1, exact=True) == pytest.approx(0.3)


def test_loss_and_gradient_match_the_formula():
    """Two problems, k = 2, with known log-probabilities: the loss's negative gradient with respect to each
    sample's log π equals SPEC's per-problem expression (averaged over the problems)."""
    tau = 0.5
    rewards = torch.tensor([1.0, 0.0, 1.5, 0.5])
    baselines = torch.tensor([0.5, 0.5, 1.0, 1.0])  # r̄ of each problem
    reference = torch.tensor([-3.0, -4.0, -2.0, -5.0])
    logprobs = torch.tensor([-2.5, -4.5, -2.0, -4.0], requires_grad=True)
    loss = opmd_loss(logprobs, reference, rewards, baselines, tau)
    delta = logprobs.detach() - reference
    expected_loss = ((rewards - baselines - tau * delta) ** 2).mean() / (2 * tau)
    assert loss.item() == pytest.approx(expected_loss.item())
    loss.backward()
    # SPEC: per sample, ∂/∂logπ_j of (1/k)Σ[logπ_j (r_j − r̄) − (τ/2) Δ_j²] = (1/k)[(r_j − r̄) − τ Δ_j];
    # averaged over 2 problems of k = 2 that is (1/4)[(r_j − r̄) − τ Δ_j]
    by_hand = (
        torch.tensor(
            [(1.0 - 0.5) - tau * 0.5, (0.0 - 0.5) - tau * (-0.5), (1.5 - 1.0) - tau * 0.0, (0.5 - 1.0) - tau * 1.0]
        )
        / 4
    )
    assert torch.allclose(-logprobs.grad, by_hand)
    # at θ = θi (Δ = 0) it is the plain policy gradient with the mean-reward baseline
    at_reference = reference.clone().requires_grad_(True)
    opmd_loss(at_reference, reference, rewards, baselines, tau).backward()
    assert torch.allclose(-at_reference.grad, (rewards - baselines) / 4)


def test_curriculum_opens_every_level_by_the_middle_of_the_run():
    import random

    from distill.rl import RLRecipe, RunState, choose_problems
    from l2s.tasks import load_task

    pool = load_task("lab", split="train", count=300, seed=1)
    recipe = RLRecipe(model="m", iterations=12, problems_per_iteration=40, prioritized=False)

    def levels_at(iteration: int) -> set[str]:
        return {p.level for p in choose_problems(list(pool), recipe, RunState(iteration=iteration), random.Random(0))}

    assert levels_at(0) == {"1"}
    assert levels_at(3) == {"1", "2"}
    assert levels_at(6) == levels_at(11) == {"1", "2", "3"}
    assert {p.level for p in choose_problems(list(pool), recipe.model_copy(update={"curriculum": False}),
                                             RunState(), random.Random(0))} == {"1", "2", "3"}  # fmt: skip


def test_checkpoint_selection_rule():
    from distill.validation import Score, select

    start = Score(0, accuracy=1.00, reasoning_tokens=230)
    drifted = Score(12, accuracy=0.85, reasoning_tokens=70)  # shortest, but lost accuracy
    kept = Score(8, accuracy=0.992, reasoning_tokens=82)  # within 1 point of the start
    tie = Score(10, accuracy=0.996, reasoning_tokens=82)  # same tokens, more accurate
    assert select([start, Score(4, 0.99, 120), kept, drifted], tolerance=0.01) == kept
    assert select([start, kept, tie, drifted], tolerance=0.01) == tie
    assert select([start, drifted], tolerance=0.01) == start  # nothing shorter kept the accuracy: the start
    assert select([start, drifted], tolerance=0.2) == drifted
    with pytest.raises(ValueError):
        select([kept], tolerance=0.01)  # the start's score must come first


def test_aes_selection_prefers_the_accurate_checkpoint_at_the_same_length():
    from distill.validation import Score, select

    start = Score(0, accuracy=0.992, reasoning_tokens=232)
    longer = Score(4, accuracy=1.0, reasoning_tokens=170)  # more accurate, but 27% of the tokens back: AES lower
    shortest = Score(26, accuracy=0.983, reasoning_tokens=87.4)  # what "fewest tokens" keeps
    accurate = Score(30, accuracy=1.0, reasoning_tokens=87.7)  # a third of a token more, 1.7 points better
    drifted = Score(32, accuracy=0.90, reasoning_tokens=60)  # outside the tolerance, whatever its AES
    scores = [start, longer, shortest, accurate, drifted]
    assert select(scores, tolerance=0.01) == shortest
    assert select(scores, tolerance=0.01, rule="aes") == accurate
    assert select([start, drifted], tolerance=0.01, rule="aes") == start
    longer_than_start = Score(6, accuracy=1.0, reasoning_tokens=240)  # AES +0.02: more accurate, but longer
    assert select([start, longer_than_start], tolerance=0.01, rule="aes") == start


def test_length_weight_schedule_warm_up_shorten_consolidate():
    from distill.rl import RLRecipe, continues, length_weight_at

    schedule = {"length_weight": 0.25, "length_warmup_iterations": 1, "consolidation_iterations": 2}
    recipe = RLRecipe(model="m", iterations=6, **schedule)
    assert [length_weight_at(i, recipe) for i in range(6)] == [0.0, 0.25, 0.25, 0.25, 0.0, 0.0]
    with pytest.raises(ValueError, match="consolidation_iterations"):
        RLRecipe(model="m", iterations=9, length_warmup_iterations=1, consolidation_iterations=8)  # none shortens
    # the last iterations are the consolidation's, so a longer run is not this run continued
    assert not continues(recipe, recipe.model_copy(update={"iterations": 10}))


def test_a_seed_sweep_refuses_a_model_trained_with_another_recipe():
    from distill.seeds import recipe_changes, trained_recipe
    from tests.conftest import ROOT

    for method in ("rl", "shortest", "dpo"):
        recipe = trained_recipe(method, str(ROOT / "configs" / "distill" / f"{method}.yaml"), seed=1)
        card = {"recipe": json.loads(json.dumps({**recipe, "model": "elsewhere"}))}  # as a card reads back
        assert recipe_changes(card, recipe) == [], method
        assert recipe_changes(card, {**recipe, "seed": 2}) == ["seed"], method
        if method == "rl":  # where the samples come from changes nothing in them (a card from before the field too)
            served = {**recipe, "rollout_server": "http://127.0.0.1:8001", "rollout_weights": "group"}
            assert recipe_changes(card, served) == []
            assert recipe_changes({"recipe": {k: v for k, v in card["recipe"].items() if k != "rollout_weights"}},
                                  recipe) == []  # fmt: skip
    older = {key: value for key, value in card["recipe"].items() if key != "epochs"}  # a field it predates
    assert recipe_changes({"recipe": older}, recipe) == ["epochs"]


def test_atomic_write_replaces_whole_files(tmp_path):
    from l2s.atomic import write_text_atomic

    target = tmp_path / "metrics.jsonl"
    write_text_atomic(target, "one\n")
    write_text_atomic(target, "two\n")
    assert target.read_text() == "two\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary left behind


def test_resume_may_extend_a_run_only_where_that_changes_nothing_else():
    from distill.rl import RLRecipe, continues

    saved = RLRecipe(model="m", iterations=12, curriculum=False)
    assert continues(saved, saved)
    assert continues(saved, saved.model_copy(update={"iterations": 16}))  # a 16-iteration run, exactly
    assert not continues(saved, saved.model_copy(update={"iterations": 8}))
    assert continues(saved, saved.model_copy(update={"merge_adapter": True}))  # (only the output's form)
    assert not continues(saved, saved.model_copy(update={"iterations": 16, "tau": 1.0}))
    with_curriculum = saved.model_copy(update={"curriculum": True})  # its level schedule spans the run
    assert not continues(with_curriculum, with_curriculum.model_copy(update={"iterations": 16}))


def test_micro_batches_accumulate_to_the_minibatch_step():
    """Gradient accumulation over micro-batches takes the same optimiser steps as whole minibatches."""
    import copy
    import random
    from types import SimpleNamespace

    from transformers import LlamaConfig, LlamaForCausalLM

    from distill.rl import RLRecipe, new_optimizer, train_iteration

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    start = LlamaForCausalLM(config).eval()
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=1)
    draw = random.Random(0)
    groups = [
        [
            {"prompt": [2, 3 + p], "completion": [draw.randrange(4, 32) for _ in range(draw.randrange(2, 9))],
             "finished": True, "correct": draw.random() < 0.7, "engine_logprob": 0.0}
            for _ in range(4)
        ]
        for p in range(4)
    ]  # fmt: skip
    for group in groups:
        for rollout in group:
            rollout["length"] = len(rollout["completion"])
    trained = []
    for micro in (None, 3):
        recipe = RLRecipe(model="m", k=4, minibatch_problems=2, micro_batch_size=micro, learning_rate=1e-3)
        model = copy.deepcopy(start)
        train_iteration(model, tokenizer, groups, recipe, 0.5, random.Random(1), new_optimizer(model, recipe))
        trained.append(model)
    moved = False
    for whole, accumulated, original in zip(*(m.parameters() for m in (*trained, start))):
        assert torch.allclose(whole, accumulated, atol=1e-6)
        moved |= not torch.equal(whole, original)
    assert moved


def test_level_share_draws_more_problems_where_the_last_iteration_failed():
    import random

    from distill.rl import RLRecipe, RunState, choose_problems
    from l2s.tasks import load_task

    pool = load_task("lab", split="train", count=900, seed=1)
    recipe = RLRecipe(model="m", problems_per_iteration=60, curriculum=False, level_share=0.5)
    state = RunState(history=[{"accuracy_by_level": {"1": 1.0, "2": 1.0, "3": 0.9}}])

    def level_3_count(recipe) -> int:
        return sum(p.level == "3" for p in choose_problems(list(pool), recipe, state, random.Random(0)))

    assert level_3_count(recipe.model_copy(update={"level_share": 0.0})) < 30  # a third, give or take
    assert level_3_count(recipe) > 35  # half of the draw goes to level 3, the only one that failed
    assert level_3_count(recipe.model_copy(update={"prioritized": False})) > 35
    # no failures last iteration (or no last iteration): the level term is left out
    assert choose_problems(list(pool), recipe, RunState(), random.Random(0)) == choose_problems(
        list(pool), recipe.model_copy(update={"level_share": 0.0}), RunState(), random.Random(0)
    )


def test_every_process_runs_as_many_micro_batches(monkeypatch):
    """Under FSDP every forward and backward is collective: the processes' shares of a minibatch come in as many
    micro-batches on each (the missing ones empty, weighted 0); on one process, the share's own chunks."""
    from distill.rl import equal_rounds
    from l2s.distributed import shard

    assert equal_rounds(list(range(10)), 10, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert equal_rounds([], 0, 4) == [[]]
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, expected in ((0, [[0, 2], [4]]), (1, [[1, 3], []])):
        monkeypatch.setenv("RANK", str(rank))
        assert equal_rounds(shard(list(range(5))), 5, 2) == expected


def test_metrics_report_continues_a_resumed_run_and_starts_a_fresh_one_anew(tmp_path, monkeypatch):
    """RL's trackers: TensorBoard scalars (nested keys joined by '/'), and one W&B run per RL run — the same id on a
    resume, a new one when a fresh run reuses the run directory (W&B would drop its steps below the old run's)."""
    import sys
    import types

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from distill.reporting import MetricsReport

    runs = []  # what each wandb.init was given, and what its run logged

    def init(**settings):
        runs.append(settings)
        logged = settings.setdefault("logged", [])
        return types.SimpleNamespace(log=lambda values, step: logged.append((step, values)), finish=lambda: None)

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))

    def run(start: int) -> None:
        report = MetricsReport(["tensorboard", "wandb"], tmp_path, "lab-rl", {}, start)
        report.log({"train": {"accuracy": 0.5, "accuracy_by_level": {"3": 0.25}, "note": "x"}}, start + 1)
        report.close()

    run(0)
    run(1)  # resumed after iteration 1
    run(0)  # a fresh run over the same directory
    assert runs[0]["id"] == runs[1]["id"] != runs[2]["id"] and runs[1]["resume"] == "allow"
    assert runs[0]["logged"] == [(1, {"train/accuracy": 0.5, "train/accuracy_by_level/3": 0.25})]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/accuracy")] == [1]  # the fresh run's log only


def test_a_rollout_request_is_sent_again_when_the_connection_drops(monkeypatch):
    """The server closing a kept-alive connection as a request goes out on it; a seeded request resent samples the
    same tokens. A server that is gone fails every attempt, with its address in the error."""
    import httpx

    from distill import rollout_server
    from distill.rollout_server import RemoteEngine

    monkeypatch.setattr(rollout_server.time, "sleep", lambda seconds: None)
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        if len(calls) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(200, json={"ok": True})

    engine = object.__new__(RemoteEngine)  # (without a server to ask for its model and tokenizer)
    engine.url, engine.client = (
        "http://rollouts",
        httpx.Client(base_url="http://rollouts", transport=httpx.MockTransport(answer)),
    )
    assert engine._post_resending("/v1/completions", {"seed": 7}).json() == {"ok": True}
    assert calls == [{"seed": 7}, {"seed": 7}]

    def gone(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    engine.client = httpx.Client(base_url="http://rollouts", transport=httpx.MockTransport(gone))
    with pytest.raises(RuntimeError, match="rollout server http://rollouts: 3 attempts failed"):
        engine._post_resending("/v1/completions", {"seed": 7})
