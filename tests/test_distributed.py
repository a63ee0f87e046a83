"""Distill under `accelerate launch` (issue #16): two processes on this CPU (torchrun, gloo). shortest and dpo:
sampling once, training spread by TRL's trainer (shortest under DeepSpeed ZeRO-2 as under DDP), the model written
once. rl: each process samples and trains on
its share, and two processes give what one gives (same global batch, same seeds) under DDP, FSDP and DeepSpeed,
also when killed and resumed, at the same or another number of processes or under another engine."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_kill_resume import L2S, _count, _once, _run, _run_through_kills

pytestmark = pytest.mark.slow

# accelerate 1.x starts one process for `--cpu --num_processes N` unless mpirun is set up; the shipped CPU config
# (configs/accelerate/cpu-ddp-2.yaml) launches 2 through torchrun, and each (the trainer's use_cpu, or RL on a
# machine without a GPU) joins with gloo
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
          str(ROOT / "configs" / "accelerate" / "cpu-ddp-2.yaml"), "-m", "l2s.cli"]  # fmt: skip
# FSDP by accelerate's flags, whose defaults load the weights on the first process only (as on GPU machines);
# accelerate applies FSDP only on accelerators, RL shards its policy itself
FSDP_LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "l2s.cli"]  # fmt: skip


# DeepSpeed ZeRO-2 by the shipped CPU config, ZeRO-3 by accelerate's flags; neither with --cpu (accelerate refuses it
# with DeepSpeed; on a machine without GPUs DeepSpeed runs on the CPU anyway, joining the processes with gloo)
DEEPSPEED_LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                    str(ROOT / "configs" / "accelerate" / "cpu-deepspeed-2.yaml"), "-m", "l2s.cli"]  # fmt: skip
ZERO3_LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--use_deepspeed", "--zero_stage", "3",
                "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "-m", "l2s.cli"]  # fmt: skip


SEED = 16  # the kill moment is drawn from it


def _launch(args: list[str], home: Path, launch: list[str] = LAUNCH) -> subprocess.CompletedProcess:
    env = {**os.environ, "L2S_HOME": str(home), "L2S_CACHE": "off"}
    done = subprocess.run([*launch, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _trained_args(lab_models: Path, method: str, out: Path) -> list[str]:
    return ["distill", method, "--model", str(lab_models / "lab-long"), "--num-problems", "48", "--max-steps", "8",
            "--save-steps", "4", "--batch-size", "4", "--out", str(out)]  # fmt: skip


def test_shortest_and_dpo_train_on_two_processes_also_under_deepspeed(lab_models, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    for method in ("shortest", "dpo"):  # dpo reads the samples shortest drew (same settings)
        out = tmp_path / "models" / f"lab-{method}-2p"
        done = _launch(_trained_args(lab_models, method, out), tmp_path)
        assert done.stdout.count(f"wrote {out}") == 1, "only the main process writes the model"
        assert "training on 2 processes: 8 examples per optimiser step" in done.stdout
        (work,) = (tmp_path / "runs" / "distill").glob(f"lab-{method}-2p-*")
        checkpoint = work / "checkpoints" / "checkpoint-8"
        # one random state per process: both trained (a one-process run writes rng_state.pth)
        assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
        # each process took half of each step's 8 examples: an epoch is ceil(examples / 8) steps (48 examples, or
        # the pairs dpo made), not ceil(examples / 4) as on one process
        examples = 48 if method == "shortest" else int(re.search(r"(\d+) pairs from", done.stdout).group(1))
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        assert state["global_step"] == 8 and abs(state["epoch"] - 8 / math.ceil(examples / 8)) < 1e-6
        card = json.loads((out / "card.json").read_text())
        assert card["training"]["steps"] == 8 and card["training"]["processes"] == 2
        assert AutoModelForCausalLM.from_pretrained(out)
    (samples,) = (tmp_path / "runs" / "samples").glob("*.jsonl")
    assert len(samples.read_text().splitlines()) == 48 * 8, "the samples were drawn once"
    # under DeepSpeed (TRL's Trainer hands it the steps): shortest under ZeRO-2, dpo under ZeRO-3 (its reference
    # model partitioned too) give the models DDP gave, in the same files (the LM head tied to the embeddings written
    # once, as save_pretrained writes it)
    for method, stage, launch in (("shortest", 2, DEEPSPEED_LAUNCH), ("dpo", 3, ZERO3_LAUNCH)):
        out = tmp_path / "models" / f"lab-{method}-zero{stage}"
        _launch(_trained_args(lab_models, method, out), tmp_path, launch)
        (work,) = (tmp_path / "runs" / "distill").glob(f"lab-{method}-zero{stage}-*")
        assert (
            work / "checkpoints" / "checkpoint-8" / "global_step8" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
        ).is_file()
        zero, ddp = (load_file(tmp_path / "models" / name / "model.safetensors")
                     for name in (f"lab-{method}-zero{stage}", f"lab-{method}-2p"))  # fmt: skip
        assert zero.keys() == ddp.keys()
        gap = max((zero[name] - ddp[name]).abs().max().item() for name in ddp)
        assert gap < 1e-5, f"{method}: ZeRO-{stage} and DDP differ by {gap}"  # (measured: 0.0 and 6e-8)


def _rl_args(lab_models: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "rl", "--model", str(lab_models / "lab-long"), "--keep-optimizer-state",
            "--iterations", "2", "--problems-per-iteration", "8", "--k", "4", "--max-tokens", "400",
            "--length-warmup-iterations", "0", "--validation-problems", "16", "--validate-every", "1",
            "--resume", "--out", str(out / "lab-rl"), *extra]  # fmt: skip


def _logs(home: Path, name: str) -> list[dict]:
    (run,) = (home / "runs" / "rl").glob("lab-rl-*")
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def _same_run(one: Path, other: Path) -> float:
    """Require the run in `other` to be the one in `one`: the same samples, rewards and validation scores, losses,
    weights and AdamW moments equal to float rounding. Returns the largest weight difference."""
    import torch
    from safetensors.torch import load_file

    exact = ("problems", "accuracy", "mean_length", "mean_length_spread", "mean_reward", "length_weight")
    for first, second in zip(_logs(one, "metrics.jsonl"), _logs(other, "metrics.jsonl"), strict=True):
        assert {key: first[key] for key in exact} == {key: second[key] for key in exact}
        for key in ("loss", "kl_term", "engine_logprob_gap"):  # (measured: 1e-7 relative, 1e-9 and 1e-7 apart)
            assert second[key] == pytest.approx(first[key], rel=1e-3, abs=1e-5), key
    assert _logs(one, "validation.jsonl") == _logs(other, "validation.jsonl")
    weights, others = load_file(one / "lab-rl" / "model.safetensors"), load_file(other / "lab-rl" / "model.safetensors")
    assert weights.keys() == others.keys()  # (gathered weights: a tied LM head written once, as from one process)
    gap = max((weights[name] - others[name]).abs().max().item() for name in weights)
    assert 0 <= gap < 1e-4, f"weights differ by {gap}"  # (measured: 4e-7 on two processes, 0 from a server)
    (first_run,), (second_run,) = (list((home / "runs" / "rl").glob("lab-rl-*")) for home in (one, other))
    moments, others = (torch.load(run / "iter-0002" / "optimizer.pt") for run in (first_run, second_run))
    assert moments["param_groups"] == others["param_groups"] and moments["state"].keys() == others["state"].keys()
    for number, state in moments["state"].items():  # (measured: 1e-7 apart under FSDP)
        for name, value in state.items():
            assert torch.allclose(value, others["state"][number][name], rtol=1e-3, atol=1e-6), (number, name)
    assert json.loads((other / "lab-rl" / "card.json").read_text())["training"]["iterations"] == 2
    return gap


@pytest.fixture(scope="module")
def one_process_rl(lab_models, tmp_path_factory) -> Path:
    """The reference: two RL iterations on one process with its own engine (the first one trains: no warm-up)."""
    one = tmp_path_factory.mktemp("one")
    assert _run(_rl_args(lab_models, one), home=one) == 0
    assert _logs(one, "metrics.jsonl")[0]["loss"] > 0
    return one


def test_rl_on_two_processes_gives_what_one_gives_also_when_killed_and_resumed(lab_models, one_process_rl, tmp_path):
    """The same run on two processes (each sampling half of every iteration's responses on its own engine and
    training on half of every minibatch, DDP summing the gradients), killed with SIGKILL (the launcher, both
    processes and their engines) after its first checkpoint and resumed. Weights equal to float rounding: DDP adds
    the gradients in another order than one process does."""
    two = tmp_path / "two"
    rng = random.Random(SEED)
    kill = _once(lambda: _count("runs/rl/lab-rl-*/iter-0001/state.json", two), rng.uniform(0, 1))

    def checkpoints() -> int:
        return _count("runs/rl/lab-rl-*/iter-*/state.json", two)

    at_kills = _run_through_kills(_rl_args(lab_models, two), [kill], checkpoints, home=two, command=LAUNCH)
    assert at_kills == [1], f"the kill did not land between the two checkpoints: {at_kills}"
    gap = _same_run(one_process_rl, two)
    print(f"one vs two processes: largest weight difference {gap:.1e}; checkpoints at the kill: {at_kills}")


def _killed_after_checkpoint_1_then_resumed(
    lab_models: Path, home: Path, seed: int, launch: list[str], how: str, resume_launch: list[str], resumed_how: str
) -> None:
    """Two RL iterations in micro-batches of 5 launched by `launch` (its banner naming `how`), SIGKILLed after the
    first checkpoint, then resumed by `resume_launch` (its banner naming `resumed_how`, or none: one process)."""
    rng = random.Random(seed)
    kill = _once(lambda: _count("runs/rl/lab-rl-*/iter-0001/state.json", home), rng.uniform(0, 1))
    log = home.parent / f"{home.name}.log"
    args = _rl_args(lab_models, home, "--micro-batch-size", "5")
    assert _run(args, kill(), home, launch, log) is None, "finished before the kill"
    assert f"rl on 2 processes ({how})" in log.read_text()
    assert _count("runs/rl/lab-rl-*/iter-*/state.json", home) == 1, "the kill did not land after checkpoint 1"
    assert _run(args, home=home, command=resume_launch, log=log) == 0
    output = log.read_text()
    assert "resuming after iteration 1" in output
    assert not resumed_how or f"rl on 2 processes ({resumed_how})" in output


def test_rl_sharded_with_fsdp_gives_what_one_process_gives_and_resumes_on_one(lab_models, one_process_rl, tmp_path):
    """The same run on two processes with the policy sharded by FSDP (each holding half of every weight, gradient
    and moment) and every minibatch in micro-batches of 5 (as many on both processes, FSDP's forwards being
    collective; gradients reduced on the last), killed after its first checkpoint, and resumed on ONE process from
    that checkpoint (written whole by the main process): a checkpoint of any world size resumes at any other."""
    sharded = tmp_path / "fsdp"
    fsdp = "FSDP, the policy sharded"
    _killed_after_checkpoint_1_then_resumed(lab_models, sharded, SEED + 1, FSDP_LAUNCH, fsdp, L2S, resumed_how="")
    gap = _same_run(one_process_rl, sharded)
    print(f"one process vs FSDP on two, resumed on one: largest weight difference {gap:.1e}")


def test_rl_under_deepspeed_gives_what_one_process_gives_also_resumed_under_another_stage(
    lab_models, one_process_rl, tmp_path
):
    """The same run on two processes under DeepSpeed ZeRO-2 (`cpu-deepspeed-2.yaml`: gradients and AdamW's moments
    in partitions, the engine stepping) in micro-batches of 5, killed after its first checkpoint and resumed under
    ZeRO-3 (the weights partitioned too): the checkpoint, in the one-process format, moves between stages."""
    home = tmp_path / "deepspeed"
    _killed_after_checkpoint_1_then_resumed(
        lab_models, home, SEED + 2, DEEPSPEED_LAUNCH, "DeepSpeed ZeRO-2", ZERO3_LAUNCH, "DeepSpeed ZeRO-3"
    )
    gap = _same_run(one_process_rl, home)
    print(f"one process vs DeepSpeed on two (ZeRO-2, resumed under ZeRO-3): largest weight difference {gap:.1e}")


def test_rl_from_a_rollout_server_gives_what_its_own_engine_gives(lab_models, one_process_rl, tmp_path):
    """`l2s distill rollout-server` (vLLM's OpenAI server with our reload extension) started on lab-long; a run
    samples from it and loads each checkpoint into it by path, then another sends it the weights over a process
    group of their own. The engine-vs-trainer log-prob gap (in the comparison) shows the server sampled from
    exactly the trained weights."""
    import httpx

    from l2s.local_server import free_port

    port = free_port()
    log = (tmp_path / "rollout-server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "l2s.cli", "distill", "rollout-server", "--model", str(lab_models / "lab-long"),
         "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "rollout-server.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        at_server = ["--rollout-server", f"http://127.0.0.1:{port}"]
        for weights in ("checkpoint", "group"):  # by path, then broadcast over a process group (gloo here)
            remote = tmp_path / f"remote-{weights}"
            assert _run(_rl_args(lab_models, remote, *at_server, "--rollout-weights", weights), home=remote) == 0
            gap = _same_run(one_process_rl, remote)
            print(f"own engine vs rollout server ({weights}): largest weight difference {gap:.1e}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
