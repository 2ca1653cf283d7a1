#!/usr/bin/env python3
"""Export a torchvision model's state_dict as safetensors, for `dml`'s backbones.

    python scripts/export_torchvision.py --model resnet50 --out resnet50.safetensors
    python scripts/export_torchvision.py --model googlenet --out g.safetensors --random-init --seed 0

Tensor names are torchvision's `state_dict` names (`conv1.weight`,
`layer1.0.bn1.running_mean`, `features.denseblock1.denselayer1.norm1.weight`,
`conv1.conv.weight`, ...); dml's loader takes the backbone's tensors and ignores
the rest (classifier, auxiliary heads, `num_batches_tracked`).

Without `--random-init` the ImageNet weights (`IMAGENET1K_V1`) are downloaded by
torchvision, which needs network access. With `--random-init` the model is built
from `--seed` and its batch-norm parameters and running statistics are
randomised too (torchvision initialises them to 1/0, which would hide a mix-up
of `running_mean` and `running_var` in a parity test).

`--reference-out FILE` additionally writes a fixed random input batch (`input`,
N×3×S×S, seeded by `--seed`) and the model's eval-mode features after global
average pooling (`features`), for comparison with dml's implementation.
"""
import argparse
import sys

import torch
import torchvision
from safetensors.torch import save_file

MODELS = {
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
    "densenet169": ("densenet169", "DenseNet169_Weights"),
    "googlenet": ("googlenet", "GoogLeNet_Weights"),
    "inception_v1": ("googlenet", "GoogLeNet_Weights"),
}


def build(name, random_init):
    ctor_name, weights_name = MODELS[name]
    ctor = getattr(torchvision.models, ctor_name)
    kwargs = {}
    if ctor_name == "googlenet":
        # dml has no auxiliary heads and scales inputs itself ((x/255 - 0.5)*2, which is
        # what torchvision's transform_input produces for the pretrained weights).
        kwargs = {"aux_logits": False, "transform_input": False}
        if random_init:
            kwargs["init_weights"] = True
    if random_init:
        return ctor(weights=None, **kwargs)
    weights = getattr(torchvision.models, weights_name).IMAGENET1K_V1
    return ctor(weights=weights, **kwargs)


def randomise_batch_norms(model, generator):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


def pooled_features(model, name, x):
    """Eval-mode features after global average pooling (before any classifier)."""
    if MODELS[name][0] == "densenet169":
        model.classifier = torch.nn.Identity()
    else:
        model.fc = torch.nn.Identity()
    model.eval()
    with torch.no_grad():
        return model(x)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--out", required=True, help="safetensors file to write")
    p.add_argument("--random-init", action="store_true", help="random weights instead of IMAGENET1K_V1")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init and the reference input")
    p.add_argument("--reference-out", help="also write a reference input and its pooled features here")
    p.add_argument("--reference-size", type=int, default=64, help="reference input height and width")
    p.add_argument("--reference-batch", type=int, default=2, help="reference batch size")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    model = build(args.model, args.random_init)
    if args.random_init:
        randomise_batch_norms(model, torch.Generator().manual_seed(args.seed + 1))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    source = f"random-init seed {args.seed}" if args.random_init else "IMAGENET1K_V1"
    metadata = {
        "model": MODELS[args.model][0],
        "torchvision": torchvision.__version__,
        "torch": torch.__version__,
        "source": source,
    }
    save_file(state, args.out, metadata=metadata)
    print(f"wrote {len(state)} tensors ({source}) to {args.out}", file=sys.stderr)

    if args.reference_out:
        g = torch.Generator().manual_seed(args.seed + 2)
        x = torch.rand(args.reference_batch, 3, args.reference_size, args.reference_size, generator=g) * 2 - 1
        features = pooled_features(model, args.model, x)
        save_file({"input": x.contiguous(), "features": features.contiguous()}, args.reference_out, metadata=metadata)
        print(f"wrote reference input {tuple(x.shape)} and features {tuple(features.shape)} to {args.reference_out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
