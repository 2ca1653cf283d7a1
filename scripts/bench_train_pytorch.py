#!/usr/bin/env python3
"""Time training steps in PyTorch eager, matching dml's train_step bench case for case.

    python scripts/bench_train_pytorch.py --model resnet18 --size 112 --batch 60 --threads 2
    python scripts/bench_train_pytorch.py --model resnet18 --size 112 --precision bf16
    python scripts/bench_train_pytorch.py --device cuda --model resnet50 --size 224 --batch 120 --precision bf16

bf16 is torch.autocast(device_type, dtype=torch.bfloat16) around the forward pass, as
dml's train.precision = "bf16". On CUDA the model and inputs are channels-last and
cuDNN autotuning is on (dml's CUDA settings); steps are timed with synchronisation.
Models: small_cnn, resnet18, resnet50 (torchvision), inception_v1 (torchvision's
googlenet without auxiliary heads), vit_s16 (timm's vit_small_patch16_224, fused attention),
bn_inception (pretrainedmodels' BNInception, globally averaged).

Same work as dml's benchmark (`torch/benches/train_step/compare.rs`): backbone (the 4-block
small CNN or torchvision's resnet18) + fc1024 head (linear 1024 without bias, BN,
ReLU, linear 128), batch-hard triplet loss with margin 1 on
sqrt(sum (x_i - x_j)^2 + 1e-12), Adam at 3e-4, random images, P x K batches with
K = 4. Prints one JSON line: {"model", "size", "batch", "threads",
"images_per_sec", "ms_per_step", "best_images_per_sec"} (the last from the
fastest step, the figure least disturbed by other work on a shared machine).
"""
import argparse
import json
import sys
import time

import torch
from torch import nn


class SmallCnn(nn.Module):
    """Four conv3x3-BN-ReLU-maxpool blocks (32, 64, 128, 256) and global average pooling."""

    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for c in (32, 64, 128, 256):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.out_features = c_in

    def forward(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)


class BnInceptionTrunk(nn.Module):
    """pretrainedmodels' BNInception features, RGB reversed to BGR and averaged globally, as dml's."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.features(x.flip(1)).mean(dim=(2, 3))


def backbone(name):
    if name == "small_cnn":
        return SmallCnn(), 256
    if name in ("resnet18", "resnet50"):
        import torchvision

        m = getattr(torchvision.models, name)(weights=None)
        width = m.fc.in_features
        m.fc = nn.Identity()
        return m, width
    if name == "inception_v1":
        import torchvision

        m = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
        m.dropout = nn.Identity()
        m.fc = nn.Identity()
        return m, 1024
    if name == "vit_s16":
        import timm

        return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, dynamic_img_size=True), 384
    if name == "bn_inception":
        from pretrainedmodels.models.bninception import BNInception

        return BnInceptionTrunk(BNInception()), 1024
    raise SystemExit(f"unknown model {name}")


def batch_hard(emb, labels, margin=1.0):
    d = torch.sqrt(((emb.unsqueeze(1) - emb.unsqueeze(0)) ** 2).sum(-1) + 1e-12)
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos = same & ~eye
    hardest_pos = (d * pos).amax(1)
    hardest_neg = d.masked_fill(same, float("inf")).amin(1)
    return torch.relu(hardest_pos - hardest_neg + margin).mean()


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="small_cnn", choices=["small_cnn", "resnet18", "resnet50", "inception_v1", "vit_s16", "bn_inception"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    trunk, width = backbone(args.model)
    head = nn.Sequential(nn.Linear(width, 1024, bias=False), nn.BatchNorm1d(1024), nn.ReLU(inplace=True), nn.Linear(1024, 128))
    model = nn.Sequential(trunk, head).train().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    images = (torch.rand(args.batch, 3, args.size, args.size) * 2 - 1).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = (torch.arange(args.batch) // 4).to(device)
    bf16 = args.precision == "bf16"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            emb = model(images)
        loss = batch_hard(emb.float(), labels)
        loss.backward()
        opt.step()
        return loss.item()  # synchronises on CUDA

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    secs = sum(times)
    print(json.dumps({
        "model": args.model,
        "precision": args.precision,
        "device": args.device,
        "size": args.size,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "images_per_sec": args.batch * args.steps / secs,
        "ms_per_step": 1e3 * secs / args.steps,
        "best_images_per_sec": args.batch / min(times),
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
