#!/usr/bin/env python3
"""Export BN-Inception weights (Cadene's `pretrainedmodels.BNInception`) as safetensors, for `dml`'s `bn_inception` backbone.

    python scripts/export_bninception.py --state-dict bn_inception-52deb4733.pth --out bn_inception.safetensors
    python scripts/export_bninception.py --random-init --seed 0 --out b.safetensors

`--state-dict` reads the PyTorch state dict the loss papers start from,
`bn_inception-52deb4733.pth` of pretrainedmodels 0.7.4 (BN-Inception trained on
ImageNet with Caffe by Xiong Yuanjun and ported to PyTorch by Cadene; download it
yourself from the URL in `pretrainedmodels/models/bninception.py`). It is loaded
strictly into `pretrainedmodels.BNInception` (so a file of another network fails
here, naming the tensors), after the older ports' `[1, C]` batch-norm tensors are
reshaped to `[C]` as the Proxy-NCA / Proxy-Anchor code does.

Tensor names are the module's `state_dict` names (`conv1_7x7_s2.weight`,
`conv1_7x7_s2_bn.running_mean`, `inception_3a_double_3x3_2_bn.bias`, ...),
without `num_batches_tracked` (dml keeps no batch counter) and with the ImageNet
classifier `last_linear.*`, which dml ignores. dml refuses a file with any other
missing, extra or mis-shaped tensor, naming it.

With `--random-init` the network is built from `--seed`, and its batch-norm
parameters and running statistics and its convolution biases are randomised too
(PyTorch initialises them to 1, 0 and small values, which would hide a mix-up of
names in a parity test).

`--reference-out FILE` additionally writes a fixed random input batch (`input`,
N×3×S×S in dml's RGB channel order, seeded by `--seed`) and the reference's
eval-mode features for it (`features`): `BNInception.features` on the same batch
with its channels reversed to BGR, then at 224 px the module's own
`global_pool` (a 7×7 average pool), at other sizes the global mean (the module's
fixed 7×7 pool only pools globally at 224 px).

Settings: `train.model.backbone = "bn_inception"`, `train.model.pretrained =
"OUT"`; the default input scaling `bn_inception` is the weights' (BGR, 0..255,
mean (104, 117, 128), std 1).
"""
import argparse
import sys

import torch
from safetensors.torch import save_file

try:
    from pretrainedmodels.models.bninception import BNInception
except ImportError as e:  # pragma: no cover - a message, not a code path
    raise SystemExit(
        f"{e}: install the reference with `pip install --no-deps pretrainedmodels==0.7.4 munch` "
        "(scripts/python-extras.sh does)"
    )


def randomise(model, generator, size=224):
    """Random weights whose activations stay of order one through the 69 layers: convolution
    and classifier biases and batch-norm scales and shifts drawn at random, the running
    statistics those of a random batch, slightly perturbed (so each layer sees roughly
    standardised inputs and the features depend on the image)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
        for m in bns:
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: this batch's statistics
        model.train()
        model.features(torch.rand(2, 3, size, size, generator=generator) * 255.0 - 120.0)
        for m in bns:
            n = m.num_features
            std = m.running_var.sqrt()
            m.running_mean.add_(torch.randn(n, generator=generator) * 0.1 * std)
            m.running_var.mul_(torch.rand(n, generator=generator) * 0.2 + 0.9)
            m.momentum = 0.1
            m.num_batches_tracked.zero_()
        model.eval()


def read_state_dict(path, model):
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise SystemExit(f"{path}: not a state dict (a {type(state).__name__})")
    want = model.state_dict()
    fixed = {}
    for k, v in state.items():
        if k in want and v.dim() == 2 and v.shape[0] == 1 and want[k].dim() == 1:
            v = v.reshape(-1)
        fixed[k] = v
    try:
        model.load_state_dict(fixed, strict=True)
    except RuntimeError as e:
        raise SystemExit(f"{path} is not a pretrainedmodels BNInception state dict: {e}")


def reference_features(model, x):
    """Eval-mode pooled features of the reference for an RGB batch `x`."""
    with torch.no_grad():
        f = model.features(x.flip(1))
        if x.shape[-1] == 224 and x.shape[-2] == 224:
            pooled = model.global_pool(f)
            assert pooled.shape[-2:] == (1, 1), pooled.shape
            return pooled.flatten(1)
        return f.mean(dim=(2, 3))


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--state-dict", help="bn_inception-52deb4733.pth (pretrainedmodels 0.7.4's ImageNet weights)")
    src.add_argument("--random-init", action="store_true", help="random weights, no download")
    p.add_argument("--out", required=True, help="safetensors file to write")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init and the reference input")
    p.add_argument("--reference-out", help="also write a reference input and its pooled features here")
    p.add_argument("--reference-size", type=int, default=224, help="reference input height and width")
    p.add_argument("--reference-batch", type=int, default=2, help="reference batch size")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    model = BNInception(num_classes=1000)
    if args.random_init:
        randomise(model, torch.Generator().manual_seed(args.seed + 1))
        source = f"random-init seed {args.seed}"
    else:
        read_state_dict(args.state_dict, model)
        source = args.state_dict
    model.eval()
    state = {
        k: v.detach().contiguous().float()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    metadata = {"model": "pretrainedmodels.BNInception", "torch": torch.__version__, "source": source}
    save_file(state, args.out, metadata=metadata)
    print(
        f'wrote {len(state)} tensors ({source}) to {args.out}; settings: '
        f'train.model.backbone = "bn_inception", train.model.pretrained = "{args.out}"',
        file=sys.stderr,
    )

    if args.reference_out:
        g = torch.Generator().manual_seed(args.seed + 2)
        s = args.reference_size
        # Pixel-like values after the weights' scaling: about x - mean, x in 0..255.
        x = (torch.rand(args.reference_batch, 3, s, s, generator=g) * 255.0) - 120.0
        features = reference_features(model, x)
        save_file(
            {"input": x.contiguous(), "features": features.contiguous()},
            args.reference_out,
            metadata=metadata,
        )
        print(
            f"wrote reference input {tuple(x.shape)} and features {tuple(features.shape)} to {args.reference_out}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
