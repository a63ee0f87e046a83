"""One process, plain torch: the reference. WORLD = the DS run's world size (only for the data split),
SCHEDULE = micro-batches per step, e.g. "2,3,2,1". RESET_AT = step index at which AdamW is made fresh.
RESUME = a one-process-format checkpoint (weights, AdamW state_dict) written after step RESUME_STEP."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import LR, MODEL_DIR, make_model_dir, micro_loss, micros_for, step_data  # noqa: E402

make_model_dir()
from transformers import AutoModelForCausalLM  # noqa: E402

torch.manual_seed(0)
world = int(os.environ.get("WORLD", 2))
schedule = [int(x) for x in os.environ.get("SCHEDULE", "2,3,2,1").split(",")]
steps = int(os.environ.get("STEPS", 4))
reset_at = int(os.environ.get("RESET_AT", -1))
out = os.environ["OUT"]
resume = os.environ.get("RESUME")
save_at = int(os.environ.get("SAVE_AT", -1))
model = AutoModelForCausalLM.from_pretrained(resume or MODEL_DIR, dtype=torch.float32)
opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
first = 0
if resume:
    opt.load_state_dict(torch.load(os.path.join(resume, "optimizer.pt")))
    first = int(open(os.path.join(resume, "step.txt")).read()) + 1
record = {"losses": [], "weights": {}, "optimizer": {}}
for step in range(first, steps):
    if step == reset_at:
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    m = micros_for(step, schedule)
    data = step_data(step, m, world)
    opt.zero_grad(set_to_none=True)
    total = 0.0
    pairs = [(j, r) for j in range(m) for r in range(world)]
    if os.environ.get("ORDER") == "reverse":
        pairs = pairs[::-1]
    for j, r in pairs:
        if True:
            loss = micro_loss(model, data[j, r]) / (m * world)
            loss.backward()
            total += loss.item()
    opt.step()
    record["losses"].append(total)
    record["weights"][step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    record["optimizer"][step] = {
        "state": {k: {kk: vv.clone() for kk, vv in v.items()} for k, v in opt.state_dict()["state"].items()},
    }
    print(f"ref step {step}: loss {total:.8f}")
    if step == save_at:
        d = out + ".ckpt"
        model.save_pretrained(d)
        torch.save(opt.state_dict(), os.path.join(d, "optimizer.pt"))
        open(os.path.join(d, "step.txt"), "w").write(str(step))
torch.save(record, out)
