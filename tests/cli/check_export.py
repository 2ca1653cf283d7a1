#!/usr/bin/env python3
"""Checks a `dml export` folder against the embeddings `dml embed` wrote for the same images.

usage: check_export.py EXPORT_DIR EMBEDDINGS.parquet
Runs model.pt (torch.jit.load) and the network load_model.py rebuilds from
model.safetensors on load_model.preprocess(paths) -- all images in one batch, a batch size
the trace never saw -- and prints {"rows", "torchscript", "safetensors"} with each form's
largest absolute difference from dml's embeddings; with a model.onnx, "onnx" too (run by
onnxruntime); with DML_JIT_LOAD naming the compiled tests/cli/jit_load.cpp, "cpp" too
(model.pt run by libtorch's torch::jit::load in C++, no Python in the loop).
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow.parquet as pq
import torch


def main(export_dir, embeddings):
    spec = importlib.util.spec_from_file_location("load_model", os.path.join(export_dir, "load_model.py"))
    lm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lm)
    t = pq.read_table(embeddings).to_pydict()
    paths = t["path"]
    ref = np.asarray(t["embedding"], dtype=np.float32)
    x = lm.preprocess(paths, export_dir)
    with torch.no_grad():
        ts = torch.jit.load(os.path.join(export_dir, "model.pt"), map_location="cpu")(x).numpy()
        st = lm.load(export_dir)(x).numpy()
    out = {
        "rows": len(paths),
        "torchscript": float(np.abs(ts - ref).max()),
        "safetensors": float(np.abs(st - ref).max()),
    }
    onnx_path = os.path.join(export_dir, "model.onnx")
    if os.path.exists(onnx_path):
        import onnxruntime

        session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        y = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        out["onnx"] = float(np.abs(y - ref).max())
    jit_load = os.environ.get("DML_JIT_LOAD")
    if jit_load:
        with tempfile.TemporaryDirectory() as tmp:
            xin, yout = os.path.join(tmp, "x.f32"), os.path.join(tmp, "y.f32")
            x.numpy().astype("<f4").tofile(xin)
            shape = [str(d) for d in x.shape]
            subprocess.run([jit_load, os.path.join(export_dir, "model.pt"), xin, *shape, yout], check=True, stdout=subprocess.DEVNULL)
            y = np.fromfile(yout, dtype="<f4").reshape(ref.shape)
        out["cpp"] = float(np.abs(y - ref).max())
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:3])
