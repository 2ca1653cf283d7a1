#!/usr/bin/env python3
"""PyTorch's own optimiser and schedules on the cases `torch/tests/optim_torch.rs` makes.

Usage: optim_reference.py SPEC.json OUT.json

Each case trains a few named tensors on a fixed quadratic loss
sum(weight * (p - target)^2) with `torch.optim.AdamW` (one parameter group per
tensor, at lr * its multiplier), `torch.nn.utils.clip_grad_norm_` when asked,
and the learning rate from `torch.optim.lr_scheduler`: `LinearLR(start_factor =
1/(W+1), total_iters = W)` for a W-step warm-up chained with `StepLR(step_size,
gamma)`. It writes the learning rate of every step and the tensors after the
last one.
"""
import json
import sys

import torch


def run(case):
    dtype = torch.float64 if case["f64"] else torch.float32
    tensors = []
    groups = []
    for t in case["tensors"]:
        p = torch.tensor(t["init"], dtype=dtype, requires_grad=True)
        tensors.append((p, torch.tensor(t["target"], dtype=dtype), torch.tensor(t["weight"], dtype=dtype)))
        groups.append({"params": [p], "lr": case["lr"] * t["multiplier"]})
    opt = torch.optim.AdamW(
        groups,
        lr=case["lr"],
        betas=(case["beta1"], case["beta2"]),
        eps=case["eps"],
        weight_decay=case["weight_decay"],
    )
    schedulers = []
    if case["warmup"] > 0:
        w = case["warmup"]
        schedulers.append(
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / (w + 1), end_factor=1.0, total_iters=w)
        )
    if case["decay_every"] > 0:
        schedulers.append(
            torch.optim.lr_scheduler.StepLR(opt, step_size=case["decay_every"], gamma=case["decay_gamma"])
        )
    sched = torch.optim.lr_scheduler.ChainedScheduler(schedulers) if schedulers else None
    lrs = []
    for _ in range(case["steps"]):
        lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        loss = sum((w * (p - c) ** 2).sum() for p, c, w in tensors)
        loss.backward()
        if case["clip"] is not None:
            torch.nn.utils.clip_grad_norm_([p for p, _, _ in tensors], case["clip"])
        opt.step()
        if sched is not None:
            sched.step()
    return {"id": case["id"], "lrs": lrs, "tensors": [p.detach().double().tolist() for p, _, _ in tensors]}


def main():
    spec_path, out_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(1)
    out = [run(c) for c in spec["cases"]]
    with open(out_path, "w") as f:
        json.dump({"torch": torch.__version__, "cases": out}, f)


if __name__ == "__main__":
    main()
