#!/usr/bin/env python3
"""Export a timm Vision Transformer's state_dict as safetensors, for `dml`'s ViT backbones.

    python scripts/export_timm.py --model vit_small_patch16_224.dino --out vit_s16_dino.safetensors
    python scripts/export_timm.py --model vit_base_patch16_224 --out b.safetensors --random-init --seed 0

Tensor names are timm's `state_dict` names (`cls_token`, `pos_embed`,
`patch_embed.proj.weight`, `blocks.0.attn.qkv.weight`, `norm.bias`, ...), without the
classifier: the file holds exactly the tensors dml's backbone has, and dml refuses a
file with a missing, extra or mis-shaped tensor, naming it.

Which dml settings each weight set needs (the script prints them too):

    timm name                                    train.model.backbone  train.model.input_scaling
    vit_small_patch16_224.dino                   vit_s16               (default: imagenet_mean_std)
    vit_small_patch16_224.augreg_in21k_ft_in1k   vit_s16               signed_unit (mean = std = 0.5)
    vit_base_patch16_224.dino                    vit_b16               (default: imagenet_mean_std)
    vit_base_patch16_224.augreg_in21k_ft_in1k    vit_b16               signed_unit
    vit_base_patch16_clip_224.openai             vit_b16_clip          (default: clip_mean_std)

Without `--random-init` the weights are downloaded from the Hugging Face Hub by timm
(which needs network access and the `huggingface_hub` package). With `--random-init`
the architecture is built from `--seed`, and its LayerNorm parameters, biases and class
token are randomised too (timm initialises them to 1, 0 and ~0, which would hide a
mix-up of names in a parity test).

`--reference-out FILE` additionally writes a fixed random input batch (`input`,
N×3×S×S, seeded by `--seed`) and the model's eval-mode pooled features (`features`:
the class token after the final norm, or with `--pool mean` the mean patch token,
as timm's `global_pool="avg", fc_norm=False`). At another size than 224 the model is
timm's `dynamic_img_size=True` one, which resamples the position embeddings with
`resample_abs_pos_embed` on every forward pass, as dml does.
"""
import argparse
import sys

import torch
import timm
from safetensors.torch import save_file

# timm architecture -> (dml backbone, dml input scaling when the weights' is not the default).
ARCHITECTURES = {
    "vit_small_patch16_224": "vit_s16",
    "vit_base_patch16_224": "vit_b16",
    "vit_base_patch16_clip_224": "vit_b16_clip",
}
# The weight sets the README lists; any other tag of these architectures works as well.
KNOWN = [
    "vit_small_patch16_224.dino",
    "vit_small_patch16_224.augreg_in21k_ft_in1k",
    "vit_base_patch16_224.dino",
    "vit_base_patch16_224.augreg_in21k_ft_in1k",
    "vit_base_patch16_clip_224.openai",
]
DEFAULT_SCALING = {
    "vit_s16": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "vit_b16": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "vit_b16_clip": (
        (0.48145466, 0.4578275, 0.40821073),
        (0.26862954, 0.26130258, 0.27577711),
    ),
}


def build(name, random_init, pool, size):
    kwargs = {"num_classes": 0}
    if pool == "mean":
        kwargs.update(global_pool="avg", fc_norm=False)
    if size is not None and size != 224:
        kwargs["dynamic_img_size"] = True
    return timm.create_model(name, pretrained=not random_init, **kwargs)


def randomise(model, generator):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
            elif isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.02)
        model.cls_token.copy_(torch.randn(model.cls_token.shape, generator=generator) * 0.02)


def settings_for(name, model):
    arch = name.split(".")[0]
    backbone = ARCHITECTURES[arch]
    mean = tuple(round(v, 6) for v in model.pretrained_cfg.get("mean", ()))
    std = tuple(round(v, 6) for v in model.pretrained_cfg.get("std", ()))
    want_mean, want_std = DEFAULT_SCALING[backbone]
    scaling = None
    if (mean, std) != (
        tuple(round(v, 6) for v in want_mean),
        tuple(round(v, 6) for v in want_std),
    ):
        if mean == (0.5, 0.5, 0.5) and std == (0.5, 0.5, 0.5):
            scaling = "signed_unit"
        elif mean == (0.485, 0.456, 0.406) and std == (0.229, 0.224, 0.225):
            scaling = "imagenet_mean_std"
        elif mean == (0.481455, 0.457828, 0.408211):
            scaling = "clip_mean_std"
        else:
            raise SystemExit(f"{name}: dml has no input scaling for mean {mean}, std {std}")
    return backbone, scaling


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help=f"timm name, e.g. {', '.join(KNOWN)}")
    p.add_argument("--out", required=True, help="safetensors file to write")
    p.add_argument("--random-init", action="store_true", help="random weights, no download")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool", choices=["token", "mean"], default="token")
    p.add_argument("--reference-out", help="also write an input batch and its pooled features")
    p.add_argument("--reference-batch", type=int, default=2)
    p.add_argument("--reference-size", type=int, default=224)
    args = p.parse_args(argv)

    arch = args.model.split(".")[0]
    if arch not in ARCHITECTURES:
        raise SystemExit(
            f"--model {args.model}: dml has the architectures {', '.join(sorted(ARCHITECTURES))}"
        )
    torch.manual_seed(args.seed)
    size = args.reference_size if args.reference_out else None
    model = build(args.model, args.random_init, args.pool, size)
    if args.random_init:
        randomise(model, torch.Generator().manual_seed(args.seed + 1))
    model.eval()
    state = {k: v.detach().contiguous().float() for k, v in model.state_dict().items()}
    save_file(state, args.out)
    backbone, scaling = settings_for(args.model, model)
    line = f'train.model.backbone = "{backbone}", train.model.pretrained = "{args.out}"'
    if scaling:
        line += f', train.model.input_scaling = "{scaling}"'
    print(f"wrote {len(state)} tensors to {args.out}; settings: {line}", file=sys.stderr)

    if args.reference_out:
        g = torch.Generator().manual_seed(args.seed)
        s = args.reference_size
        x = torch.randn(args.reference_batch, 3, s, s, generator=g)
        with torch.no_grad():
            features = model(x)
        save_file(
            {"input": x.contiguous(), "features": features.contiguous()},
            args.reference_out,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
