import sys, torch
a, b = torch.load(sys.argv[1]), torch.load(sys.argv[2])
for i, (x, y) in enumerate(zip(a["losses"], b["losses"])):
    print(f"loss[{i}] {x:.8f} vs {y:.8f} diff {abs(x-y):.2e}")
for s in sorted(set(a["weights"]) & set(b["weights"])):
    wa, wb = a["weights"][s], b["weights"][s]
    d = max((wa[n] - wb[n]).abs().max().item() for n in wa if n in wb)
    line = f"step {s}: max|Δweight| {d:.2e}"
    oa, ob = a["optimizer"].get(s), b["optimizer"].get(s)
    if oa and ob and oa["state"] and ob["state"]:
        dm = max((oa["state"][i][k].reshape(ob["state"][i][k].shape) - ob["state"][i][k]).abs().max().item() for i in ob["state"] for k in ("exp_avg", "exp_avg_sq"))
        steps_ = {float(v["step"]) for v in oa["state"].values()}, {float(v["step"]) for v in ob["state"].values()}
        line += f"  max|Δmoment| {dm:.2e}  step counts {steps_}"
    print(line)
