#!/usr/bin/env python3
"""Pillow baseline for datasets/benches/decode.rs: one process, one thread.

Per image: Image.open -> convert("RGB") -> resize((256, 256), BILINEAR) ->
centre crop 224 -> numpy array (uint8 HWC). One warm-up pass, then PASSES timed
passes over every *.jpg in DIR; the best and the median pass are reported.

usage: bench_pillow.py DIR [PASSES [DUMP]]
prints: pillow_images_per_s_best <float>, pillow_images_per_s_median <float>
DUMP: if given, the 224x224x3 uint8 crops of the first 10 files (sorted) are
written there back to back, for a pixel comparison with the Rust pipeline.
"""
import glob
import os
import sys
import time

import numpy as np
from PIL import Image

SIZE, CROP = 256, 224


def one(path):
    with Image.open(path) as im:
        im = im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
    off = (SIZE - CROP) // 2
    return np.asarray(im.crop((off, off, off + CROP, off + CROP)))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    files = sorted(glob.glob(os.path.join(sys.argv[1], "*.jpg")))
    passes = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    if not files:
        sys.exit(f"no .jpg files in {sys.argv[1]}")
    for f in files:  # warm-up (page cache, imports)
        one(f)
    if len(sys.argv) > 3:
        with open(sys.argv[3], "wb") as out:
            for f in files[:10]:
                out.write(one(f).tobytes())
    rates = []
    for _ in range(passes):
        t = time.perf_counter()
        for f in files:
            a = one(f)
            assert a.shape == (CROP, CROP, 3)
        rates.append(len(files) / (time.perf_counter() - t))
    rates.sort(reverse=True)
    print(f"pillow {Image.__version__} ({len(files)} files x {passes} passes)")
    print(f"pillow_images_per_s_best {rates[0]:.1f}")
    print(f"pillow_images_per_s_median {rates[len(rates) // 2]:.1f}")


if __name__ == "__main__":
    main()
