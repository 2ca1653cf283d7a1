#!/usr/bin/env python3
"""Rebuild a network `dml export` wrote, from torchvision and the files beside this script.

    import load_model
    net = load_model.load()                    # model.json + model.safetensors here
    x = load_model.preprocess(["a.jpg", "b.png"])  # [N, 3, crop, crop] float32
    embeddings = net(x)                        # [N, D]

    python load_model.py IMAGE...              # one JSON line per image: path, embedding

Needs torch, torchvision (for ResNet, DenseNet and Inception V1 backbones; BN-Inception is
defined here, under pretrainedmodels' tensor names) or timm (for the ViTs: model.json's
`timm_model`, built with random weights and then given the exported ones), safetensors,
numpy and Pillow; not dml. The preprocessing is dml's embed stage's (model.json's `input`):
both sides resized to `resize` with Pillow's bilinear filter (dml's resize is
Pillow-compatible; JPEG decoders may differ by a grey level here and there, PNG is exact),
the centre `crop`² cut out, `(x / 255 - mean) / std` per channel in float32, NCHW.
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))


class SmallCnn(torch.nn.Module):
    """dml's small CPU backbone: four conv3x3-BN-ReLU-maxpool blocks, global average pooling."""

    def __init__(self, widths=(32, 64, 128, 256)):
        super().__init__()
        blocks, c_in = [], 3
        for c in widths:
            block = torch.nn.Module()
            block.conv = torch.nn.Conv2d(c_in, c, 3, padding=1, bias=False)
            block.bn = torch.nn.BatchNorm2d(c, eps=1e-5)
            blocks.append(block)
            c_in = c
        self.features = torch.nn.ModuleList(blocks)

    def forward(self, x):
        for b in self.features:
            x = torch.nn.functional.max_pool2d(torch.relu(b.bn(b.conv(x))), 2, 2)
        return x.mean(dim=(2, 3))


class BnInception(torch.nn.Module):
    """BN-Inception under pretrainedmodels' BNInception tensor names (conv with bias + BN + ReLU
    units), RGB in (reversed to the BGR of its Caffe weights), global average pooling."""

    # (block, in, 1x1, 3x3 reduce, 3x3, double reduce, double 3x3, pool: "avg"/"max" + proj, or "stride2")
    BLOCKS = [
        ("inception_3a", 192, 64, 64, 64, 64, 96, "avg", 32),
        ("inception_3b", 256, 64, 64, 96, 64, 96, "avg", 64),
        ("inception_3c", 320, 0, 128, 160, 64, 96, "stride2", 0),
        ("inception_4a", 576, 224, 64, 96, 96, 128, "avg", 128),
        ("inception_4b", 576, 192, 96, 128, 96, 128, "avg", 128),
        ("inception_4c", 576, 160, 128, 160, 128, 160, "avg", 128),
        ("inception_4d", 608, 96, 128, 192, 160, 192, "avg", 128),
        ("inception_4e", 608, 0, 128, 192, 192, 256, "stride2", 0),
        ("inception_5a", 1056, 352, 192, 320, 160, 224, "avg", 128),
        ("inception_5b", 1024, 352, 192, 320, 192, 224, "max", 128),
    ]

    def __init__(self):
        super().__init__()
        self.unit("conv1_7x7_s2", 3, 64, 7, 2)
        self.unit("conv2_3x3_reduce", 64, 64, 1, 1)
        self.unit("conv2_3x3", 64, 192, 3, 1)
        for n, c_in, c1, c3r, c3, cdr, cd, pool, cp in self.BLOCKS:
            s = 2 if pool == "stride2" else 1
            if c1:
                self.unit(f"{n}_1x1", c_in, c1, 1, 1)
            self.unit(f"{n}_3x3_reduce", c_in, c3r, 1, 1)
            self.unit(f"{n}_3x3", c3r, c3, 3, s)
            self.unit(f"{n}_double_3x3_reduce", c_in, cdr, 1, 1)
            self.unit(f"{n}_double_3x3_1", cdr, cd, 3, 1)
            self.unit(f"{n}_double_3x3_2", cd, cd, 3, s)
            if cp:
                self.unit(f"{n}_pool_proj", c_in, cp, 1, 1)

    def unit(self, name, c_in, c_out, k, stride):
        setattr(self, name, torch.nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2))
        setattr(self, f"{name}_bn", torch.nn.BatchNorm2d(c_out, eps=1e-5))

    def run(self, name, x):
        return torch.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)))

    def forward(self, x):
        f = torch.nn.functional
        x = x.flip(1)
        x = f.max_pool2d(self.run("conv1_7x7_s2", x), 3, 2, ceil_mode=True)
        x = f.max_pool2d(self.run("conv2_3x3", self.run("conv2_3x3_reduce", x)), 3, 2, ceil_mode=True)
        for n, _, c1, _, _, _, _, pool, _ in self.BLOCKS:
            out = [self.run(f"{n}_1x1", x)] if c1 else []
            out.append(self.run(f"{n}_3x3", self.run(f"{n}_3x3_reduce", x)))
            d = self.run(f"{n}_double_3x3_1", self.run(f"{n}_double_3x3_reduce", x))
            out.append(self.run(f"{n}_double_3x3_2", d))
            if pool == "avg":
                out.append(self.run(f"{n}_pool_proj", f.avg_pool2d(x, 3, 1, 1, ceil_mode=True, count_include_pad=True)))
            elif pool == "max":
                out.append(self.run(f"{n}_pool_proj", f.max_pool2d(x, 3, 1, 1, ceil_mode=True)))
            else:
                out.append(f.max_pool2d(x, 3, 2, ceil_mode=True))
            x = torch.cat(out, 1)
        return x.mean(dim=(2, 3))


def timm_backbone(meta):
    """A timm ViT as dml runs it: no classifier, the pooling of model.json's `model.pool`
    (`token`: the class token after the final norm; `mean`: the mean of the normed patch
    tokens, timm's `global_pool="avg", fc_norm=False`), and, at another input size than
    224, timm's `dynamic_img_size`, which resamples the 14 x 14 position embeddings on each
    forward pass (bicubic, antialiased) exactly as dml does."""
    import timm

    kwargs = {"num_classes": 0}
    if meta["model"].get("pool", "token") == "mean":
        kwargs.update(global_pool="avg", fc_norm=False)
    if meta["input"]["crop"] != 224:
        kwargs["dynamic_img_size"] = True
    return timm.create_model(meta["timm_model"], pretrained=False, **kwargs)


def backbone(name, meta=None):
    if name == "small_cnn":
        return SmallCnn()
    if name == "bn_inception":
        return BnInception()
    if meta is not None and meta.get("timm_model"):
        return timm_backbone(meta)
    import torchvision

    if name in ("resnet18", "resnet50"):
        m = getattr(torchvision.models, name)(weights=None)
        m.fc = torch.nn.Identity()
    elif name == "densenet169":
        m = torchvision.models.densenet169(weights=None)
        m.classifier = torch.nn.Identity()
    elif name == "inception_v1":
        m = torchvision.models.googlenet(weights=None, aux_logits=False, transform_input=False, init_weights=False)
        m.fc = torch.nn.Identity()
    else:
        raise ValueError(f"unknown backbone {name!r}")
    return m


class Head(torch.nn.Module):
    def __init__(self, kind, c_in, dim):
        super().__init__()
        self.kind = kind
        if kind == "direct":
            self.fc = torch.nn.Linear(c_in, dim)
        elif kind == "fc1024":
            self.fc1 = torch.nn.Linear(c_in, 1024, bias=False)
            self.bn1 = torch.nn.BatchNorm1d(1024, eps=1e-5)
            self.fc2 = torch.nn.Linear(1024, dim)
        else:
            raise ValueError(f"unknown head {kind!r}")

    def forward(self, x):
        if self.kind == "direct":
            return self.fc(x)
        return self.fc2(torch.relu(self.bn1(self.fc1(x))))


class Embedding(torch.nn.Module):
    """Backbone, head and (optionally) L2 normalisation, as dml builds them."""

    def __init__(self, meta):
        super().__init__()
        self.backbone = backbone(meta["backbone"], meta)
        feat = getattr(self.backbone, "num_features", None)
        if feat is None:
            with torch.no_grad():
                c = meta["input"]["crop"]
                self.backbone.eval()
                feat = self.backbone(torch.zeros(1, 3, max(c, 32), max(c, 32))).shape[1]
        self.head = Head(meta["head"], feat, meta["embedding_dim"])
        self.normalize = bool(meta["normalize"])

    def forward(self, x):
        e = self.head(self.backbone(x))
        if self.normalize:
            # TF's l2_normalize, as dml: x / sqrt(max(sum(x^2), 1e-12)).
            e = e / e.square().sum(dim=1, keepdim=True).clamp_min(1e-12).sqrt()
        return e


def read_meta(folder=HERE):
    with open(os.path.join(folder, "model.json")) as f:
        return json.load(f)


def load(folder=HERE):
    """The network in eval mode, with the exported weights."""
    meta = read_meta(folder)
    net = Embedding(meta)
    state = load_file(os.path.join(folder, meta["files"]["safetensors"]))
    missing, unexpected = net.load_state_dict(state, strict=False)
    # torchvision's batch norms count their batches; dml's do not keep that counter.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"the weights do not fit the network: missing {missing}, unexpected {unexpected}")
    return net.eval()


def preprocess(paths, folder=HERE, meta=None):
    """Images → [N, 3, crop, crop] float32, as dml's embed stage prepares them."""
    from PIL import Image

    meta = meta or read_meta(folder)
    inp = meta["input"]
    size, crop = inp["resize"], inp["crop"]
    mean = np.asarray(inp["mean"], dtype=np.float32)
    std = np.asarray(inp["std"], dtype=np.float32)
    off = (size - crop) // 2
    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)[off : off + crop, off : off + crop]
        x = a.astype(np.float32) / np.float32(255.0)
        x = (x - mean) / std
        out.append(np.ascontiguousarray(x.transpose(2, 0, 1)))
    return torch.from_numpy(np.stack(out))


def main(argv):
    if not argv:
        sys.exit(__doc__)
    net = load()
    with torch.no_grad():
        e = net(preprocess(argv))
    for p, v in zip(argv, e.tolist()):
        print(json.dumps({"path": p, "embedding": v}))


if __name__ == "__main__":
    main(sys.argv[1:])
