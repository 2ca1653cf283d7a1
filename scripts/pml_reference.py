#!/usr/bin/env python3
"""pytorch-metric-learning's values and gradients for the cases dml's loss tests make.

    python scripts/pml_reference.py SPEC.json INPUTS.safetensors OUT.safetensors

SPEC.json is a list of cases: {"id", "loss", "params", "dtype" ("f64"|"f32"), "dim",
"classes" (proxy losses), "miner_epsilon" (or null), "memory" (0: none), "steps"}.
INPUTS holds, per case, `{id}.emb{s}` and `{id}.labels{s}` for each step s and, for the
losses with class parameters, `{id}.param` in PML's layout (proxies [C, D], W [D, C],
fc [D, C*K]). OUT gets `{id}.loss{s}`, `{id}.grad_emb{s}` and `{id}.grad_param{s}`.
"""
import json
import sys

import torch
from pytorch_metric_learning import losses, miners, regularizers
from safetensors.torch import load_file, save_file

PARAM = {"proxy_anchor": "proxies", "proxy_nca": "proxies", "arcface": "W", "soft_triple": "fc"}


def build(case):
    p, name, dim, classes = case["params"], case["loss"], case["dim"], case.get("classes")
    if name == "multi_similarity":
        return losses.MultiSimilarityLoss(alpha=p["alpha"], beta=p["beta"], base=p["base"])
    if name == "circle":
        return losses.CircleLoss(m=p["m"], gamma=p["gamma"])
    if name == "proxy_anchor":
        return losses.ProxyAnchorLoss(classes, dim, margin=p["margin"], alpha=p["alpha"])
    if name == "proxy_nca":
        return losses.ProxyNCALoss(classes, dim, softmax_scale=p["softmax_scale"])
    if name == "arcface":
        return losses.ArcFaceLoss(classes, dim, margin=p["margin"], scale=p["scale"])
    if name == "soft_triple":
        k = p["centers_per_class"]
        reg = None
        if p["tau"] > 0:
            reg = regularizers.SparseCentersRegularizer(classes, k)
        return losses.SoftTripleLoss(
            classes, dim, centers_per_class=k, la=p["la"], gamma=p["gamma"],
            margin=p["margin"], weight_regularizer=reg, weight_reg_weight=p["tau"],
        )
    raise ValueError(f"unknown loss {name}")


def main():
    spec_path, inputs_path, out_path = sys.argv[1:4]
    with open(spec_path) as f:
        spec = json.load(f)
    inputs = load_file(inputs_path)
    out = {}
    for case in spec:
        cid = case["id"]
        dtype = torch.float64 if case["dtype"] == "f64" else torch.float32
        loss_fn = build(case)
        param = None
        if case["loss"] in PARAM:
            param = getattr(loss_fn, PARAM[case["loss"]])
            with torch.no_grad():
                param.data = inputs[f"{cid}.param"].to(dtype).clone()
        miner = None
        if case.get("miner_epsilon") is not None:
            miner = miners.MultiSimilarityMiner(epsilon=case["miner_epsilon"])
        wrapper = None
        if case.get("memory", 0) > 0:
            wrapper = losses.CrossBatchMemory(
                loss_fn, case["dim"], memory_size=case["memory"], miner=miner
            )
        for s in range(case["steps"]):
            emb = inputs[f"{cid}.emb{s}"].to(dtype).clone().requires_grad_(True)
            labels = inputs[f"{cid}.labels{s}"].long()
            if wrapper is not None:
                value = wrapper(emb, labels)
            else:
                indices = miner(emb, labels) if miner is not None else None
                value = loss_fn(emb, labels, indices)
            value.backward()
            out[f"{cid}.loss{s}"] = value.detach().reshape(1).to(torch.float64)
            grad = emb.grad if emb.grad is not None else torch.zeros_like(emb)
            out[f"{cid}.grad_emb{s}"] = grad.to(torch.float64)
            if param is not None:
                g = param.grad if param.grad is not None else torch.zeros_like(param)
                out[f"{cid}.grad_param{s}"] = g.detach().to(torch.float64).clone()
                param.grad = None
    save_file(out, out_path)


if __name__ == "__main__":
    main()
