#!/usr/bin/env python3
"""pytorch-metric-learning's side of `cargo bench -p dml-torch --bench loss_step`.

Times, per loss, the mean forward + backward of one step on a [batch, dim] f32 leaf,
L2-normalised inside the step as dml's side does, with the labels the bench passes,
and prints {loss: milliseconds per step} as JSON.
"""
import argparse
import json
import time

import torch
from pytorch_metric_learning import losses, miners


def build(name, classes, dim):
    if name.startswith("multi_similarity"):
        return losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5)
    if name == "circle":
        return losses.CircleLoss(m=0.25, gamma=256.0)
    if name == "proxy_anchor":
        return losses.ProxyAnchorLoss(classes, dim, margin=0.1, alpha=32.0)
    if name == "proxy_nca":
        return losses.ProxyNCALoss(classes, dim, softmax_scale=1.0)
    if name == "arcface":
        return losses.ArcFaceLoss(classes, dim, margin=28.6, scale=64.0)
    if name == "soft_triple":
        return losses.SoftTripleLoss(classes, dim, centers_per_class=10, la=20.0, gamma=0.1, margin=0.01)
    raise ValueError(name)


def main():
    ap = argparse.ArgumentParser()
    for flag in ["--steps", "--warmup", "--threads", "--batch", "--dim", "--classes"]:
        ap.add_argument(flag, type=int, required=True)
    ap.add_argument("--labels", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    labels = torch.tensor([int(x) for x in a.labels.split(",")])
    out = {}
    for name in [
        "multi_similarity", "multi_similarity+miner", "circle", "proxy_anchor",
        "proxy_nca", "arcface", "soft_triple",
    ]:
        loss_fn = build(name, a.classes, a.dim)
        miner = miners.MultiSimilarityMiner(epsilon=0.1) if name.endswith("+miner") else None
        raw = torch.randn(a.batch, a.dim, requires_grad=True)
        total = 0.0
        for step in range(a.warmup + a.steps):
            start = time.perf_counter()
            raw.grad = None
            loss_fn.zero_grad()
            x = torch.nn.functional.normalize(raw, dim=1)
            if miner is not None:
                loss = loss_fn(x, labels, miner(x, labels))
            else:
                loss = loss_fn(x, labels)
            loss.backward()
            elapsed = time.perf_counter() - start
            if step >= a.warmup:
                total += elapsed
        out[name] = 1e3 * total / a.steps
    print(json.dumps(out))


if __name__ == "__main__":
    main()
