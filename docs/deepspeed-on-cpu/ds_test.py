"""accelerate + DeepSpeed ZeRO on CPU (gloo). Env:
STAGE (2|3), MODE (accumulate|naive|managed|unmanaged|torch|boundary), SCHEDULE ("2,3,2,1": micro-batches per step;
fixed-GAS modes need one constant), STEPS, OUT (rank 0 writes a record), SAVE_AT (write a one-process-format
checkpoint dir OUT.ckpt after that step), RESUME (a one-process-format checkpoint dir to start from),
RESET_AT (clear AdamW's state in place before that step), GET_STATE_DICT (1: also try accelerator.get_state_dict)."""
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import LR, MB, MODEL_DIR, make_model_dir, micro_loss, micros_for, step_data  # noqa: E402

stage = int(os.environ.get("STAGE", 2))
mode = os.environ.get("MODE", "unmanaged")
schedule = [int(x) for x in os.environ.get("SCHEDULE", "2,3,2,1").split(",")]
steps = int(os.environ.get("STEPS", 4))
out = os.environ.get("OUT")
save_at = int(os.environ.get("SAVE_AT", -1))
resume = os.environ.get("RESUME")
reset_at = int(os.environ.get("RESET_AT", -1))
fixed_gas = mode in ("accumulate", "naive", "managed")
if fixed_gas:
    assert len(set(schedule)) == 1, "fixed-GAS modes need a constant schedule"

from accelerate import Accelerator, DeepSpeedPlugin  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402

config = {
    "train_micro_batch_size_per_gpu": MB,
    "gradient_accumulation_steps": schedule[0] if fixed_gas else 1,
    "gradient_clipping": 0.0,
    "zero_optimization": {"stage": stage, "stage3_gather_16bit_weights_on_model_save": True},
    "zero_allow_untested_optimizer": True,
}
if mode in ("unmanaged", "torch"):
    config["managed_gradient_accumulation"] = False
if os.environ.get("PLUGIN_FROM_ENV") == "1":  # the launcher's settings (CLI flags or YAML), then our additions
    plugin = DeepSpeedPlugin()
    extra = {k: v for k, v in config.items() if k not in ("zero_optimization", "gradient_accumulation_steps")}
    plugin.deepspeed_config.update(extra)
    # accelerate would fill "auto" with micro × GAS × ITS num_processes (1 here, wrongly): let DeepSpeed derive it
    plugin.deepspeed_config.pop("train_batch_size", None)
    plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    if fixed_gas:
        plugin.deepspeed_config["gradient_accumulation_steps"] = schedule[0]
else:
    plugin = DeepSpeedPlugin(hf_ds_config=config)
accelerator = Accelerator(deepspeed_plugin=plugin, cpu=os.environ.get("ACC_CPU") == "1")
rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()  # accelerate's own are wrong here
print(
    f"[rank {rank}] accelerator.process_index={accelerator.process_index} is_main_process={accelerator.is_main_process} distributed_type={accelerator.distributed_type} accelerator.num_processes={accelerator.num_processes} device={accelerator.device} "
    f"backend={accelerator.state.backend} torch.dist world={torch.distributed.get_world_size() if torch.distributed.is_initialized() else None}",
    flush=True,
)
print(f"[rank {rank}] ds config: {plugin.deepspeed_config}", flush=True)
assert accelerator.distributed_type == DistributedType.DEEPSPEED

if rank == 0:
    make_model_dir()
torch.distributed.barrier()
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.integrations import is_deepspeed_zero3_enabled  # noqa: E402

torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(resume or MODEL_DIR, dtype=torch.float32)
print(f"[rank {rank}] zero3 enabled per transformers: {is_deepspeed_zero3_enabled()}; "
      f"first param shape after from_pretrained: {tuple(next(model.parameters()).shape)}", flush=True)
optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
engine, optimizer = accelerator.prepare(model, optimizer)
print(f"[rank {rank}] prepared: {type(engine).__name__}, optimizer {type(optimizer).__name__} around "
      f"{type(engine.optimizer).__name__} around {type(engine.optimizer.optimizer).__name__}", flush=True)

import deepspeed  # noqa: E402
from deepspeed.utils import safe_get_full_optimizer_state, safe_set_full_optimizer_state  # noqa: E402

names = [n for n, _ in engine.module.named_parameters()]
params = [p for _, p in engine.module.named_parameters()]


def base_optimizer():
    return engine.optimizer.optimizer  # torch AdamW over the flat fp32 partitions


def full_weights():
    """Every rank calls; full fp32 weights (on every rank)."""
    if stage == 3:
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {n: p.detach().clone() for n, p in zip(names, params)}
    return {n: p.detach().clone() for n, p in zip(names, params)}


def full_optimizer_state():
    """Every rank calls (collective); AdamW's state in one-process torch form, keyed by parameter index."""
    steps_seen = {float(s["step"]) for s in base_optimizer().state.values() if "step" in s}
    if not steps_seen:
        return {"state": {}, "param_groups": plain_param_groups()}
    (step,) = steps_seen
    state = {}
    for i, p in enumerate(params):
        state[i] = {
            "step": torch.tensor(step),
            "exp_avg": safe_get_full_optimizer_state(p, "exp_avg").detach().clone().view(p.ds_shape if stage == 3 else p.shape),
            "exp_avg_sq": safe_get_full_optimizer_state(p, "exp_avg_sq").detach().clone().view(p.ds_shape if stage == 3 else p.shape),
        }
    return {"state": state, "param_groups": plain_param_groups()}


def plain_param_groups():
    dummy = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1)) for _ in params], lr=LR, weight_decay=0.0)
    return dummy.state_dict()["param_groups"]


def load_optimizer_state(saved):
    """Every rank calls with the one-process state: make the (lazy) AdamW state on the flat partitions, then scatter."""
    if not saved["state"]:
        return
    (step,) = {float(s["step"]) for s in saved["state"].values()}
    base = base_optimizer()
    # the flat fp32 partitions AdamW steps (ZeRO-3 swaps its sub-groups into param_groups only while stepping)
    flats = engine.optimizer.fp32_partitioned_groups_flat if stage == 3 else [f for g in base.param_groups for f in g["params"]]
    for flat in flats:
        if True:
            base.state[flat] = {
                "step": torch.tensor(step),
                "exp_avg": torch.zeros_like(flat),
                "exp_avg_sq": torch.zeros_like(flat),
            }
    if stage < 3:  # ZeRO-1/2 link each parameter's fragment of the state lazily, at the first step
        engine.optimizer._lazy_init_hp_params_optimizer_state()
    for i, p in enumerate(params):
        for key in ("exp_avg", "exp_avg_sq"):
            safe_set_full_optimizer_state(p, saved["state"][i][key].reshape(-1) if stage == 3 else saved["state"][i][key], key)


first = 0
if resume:
    load_optimizer_state(torch.load(os.path.join(resume, "optimizer.pt")))
    first = int(open(os.path.join(resume, "step.txt")).read()) + 1

with torch.no_grad():  # rl.py's reference log-probs run on the unwrapped policy (engine.module)
    t = step_data(0, 1, world)[0, rank]
    a, b = engine.module(input_ids=t).logits, engine(input_ids=t).logits
    print(f"[rank {rank}] no_grad forward engine.module vs engine: max|diff| {(a - b).abs().max().item():.2e}", flush=True)
record = {"losses": [], "weights": {}, "optimizer": {}, "global_steps": [], "seconds": []}
for step in range(first, steps):
    if step == reset_at:
        for st in base_optimizer().state.values():  # a fresh AdamW, in place (keeps DeepSpeed's views valid)
            for v in st.values():
                v.zero_()
    started = time.time()
    m = micros_for(step, schedule)
    data = step_data(step, m, world)
    total = torch.zeros(())
    engine.train()
    if mode in ("boundary",):
        pass
    for j in range(m):
        tokens = data[j, rank].to(accelerator.device)
        last = j == m - 1
        if mode == "accumulate":
            with accelerator.accumulate(engine):
                loss = micro_loss(engine, tokens)
                accelerator.backward(loss)  # DeepSpeed divides by its gradient_accumulation_steps
                optimizer.step()  # no-ops: accelerate's backward steps the engine at the boundary
                optimizer.zero_grad()
            total += loss.detach() / m
        elif mode == "naive":
            loss = micro_loss(engine, tokens)
            accelerator.backward(loss)
            total += loss.detach() / m
        elif mode == "managed":
            loss = micro_loss(engine, tokens)
            engine.backward(loss)  # scaled by 1/gradient_accumulation_steps
            engine.step()  # only steps at the boundary (micro_steps % GAS == 0)
            total += loss.detach() / m
        elif mode == "unmanaged":
            loss = micro_loss(engine, tokens) / m
            engine.backward(loss, scale_wrt_gas=False)
            total += loss.detach()
        elif mode == "torch":
            loss = micro_loss(engine, tokens) / m
            loss.backward()  # torch-style backward into the ZeRO hooks
            total += loss.detach()
        elif mode == "boundary":
            engine.set_gradient_accumulation_boundary(last)
            loss = micro_loss(engine, tokens) / m
            engine.backward(loss, scale_wrt_gas=False)
            total += loss.detach()
    if mode in ("unmanaged", "torch", "boundary"):
        engine.step()
    # the minibatch's loss: mean over ranks of each rank's share
    torch.distributed.all_reduce(total)
    total = total.item() / world
    record["losses"].append(total)
    record["global_steps"].append(engine.global_steps)
    record["seconds"].append(time.time() - started)
    weights = full_weights()
    record["weights"][step] = weights
    try:
        record["optimizer"][step] = full_optimizer_state()
    except Exception:
        if rank == 0:
            traceback.print_exc()
        record["optimizer"][step] = None
    if rank == 0:
        print(f"ds step {step}: loss {total:.8f} engine.global_steps={engine.global_steps} "
              f"({record['seconds'][-1]:.2f}s)", flush=True)
    if step == save_at:
        moments = record["optimizer"][step]
        if rank == 0:
            d = out + ".ckpt"
            plain = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32) if stage != 3 else None
            # write a plain model dir with the gathered weights
            engine.module.save_pretrained(d, state_dict=weights, safe_serialization=True)
            torch.save(moments, os.path.join(d, "optimizer.pt"))
            open(os.path.join(d, "step.txt"), "w").write(str(step))
        torch.distributed.barrier()

if os.environ.get("GET_STATE_DICT") == "1":
    try:
        sd = accelerator.get_state_dict(engine)
        if rank == 0:
            diff = max((sd[n].float() - record["weights"][steps - 1][n]).abs().max().item() for n in names)
            print(f"accelerator.get_state_dict: {len(sd)} tensors on rank 0, max |diff| vs gathered {diff:.2e}")
        else:
            print(f"[rank {rank}] accelerator.get_state_dict returned {type(sd).__name__} len {len(sd) if sd else 0}")
    except Exception:
        traceback.print_exc()

if rank == 0 and out:
    torch.save(record, out)
    checksum = sum(v.double().sum().item() for v in record["weights"][steps - 1].values())
    print(f"final weight checksum {checksum:.10f}")
torch.distributed.barrier()
accelerator.end_training()
