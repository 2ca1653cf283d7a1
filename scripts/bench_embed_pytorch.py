#!/usr/bin/env python3
"""PyTorch eager baseline for `dml embed` (scripts/bench_use.sh): the same exported network
(load_model.py rebuilding it from model.safetensors and torchvision), the same images, the
same preprocessing (Pillow: decode, bilinear resize, centre crop, scaling) and batch size,
one process, torch's default CPU threads.

usage: bench_embed_pytorch.py EXPORT_DIR IMAGE_DIR BATCH_SIZE
prints: pytorch_images <n>, pytorch_seconds <s> (model load to the last batch),
        pytorch_images_per_s <float>
"""
import glob
import importlib.util
import os
import sys
import time

import torch


def main(export_dir, image_dir, batch):
    t0 = time.perf_counter()
    spec = importlib.util.spec_from_file_location("load_model", os.path.join(export_dir, "load_model.py"))
    lm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lm)
    files = sorted(
        f for f in glob.glob(os.path.join(image_dir, "**", "*"), recursive=True)
        if f.lower().endswith((".jpg", ".jpeg", ".png"))
    )
    meta = lm.read_meta(export_dir)
    net = lm.load(export_dir)
    n = 0
    with torch.inference_mode():
        for i in range(0, len(files), batch):
            x = lm.preprocess(files[i : i + batch], export_dir, meta)
            net(x)
            n += x.shape[0]
    secs = time.perf_counter() - t0
    print(f"pytorch_images {n}")
    print(f"pytorch_seconds {secs:.3f}")
    print(f"pytorch_images_per_s {n / secs:.2f}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
