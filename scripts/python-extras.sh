#!/usr/bin/env bash
# Python packages the tests compare against, installed once into the torch venv
# (the same interpreter whose libtorch `dml` links): torchvision for the backbone
# parity test, timm for the ViT parity test, pretrainedmodels for the BN-Inception one, pytorch-metric-learning for the loss comparisons, pyarrow/polars/pandas for the
# notebook-facing tests, Pillow for benches, moto's S3 server (and boto3) for the remote-cache
# tests, TensorBoard (its EventAccumulator reads back the event files the train and report
# stages write), onnx and onnxruntime (`dml export --format onnx` and its check).
set -euo pipefail
py="$(command -v python3)"
# torchvision without its dependencies: they would pull another torch.
"$py" -c "import torchvision" 2>/dev/null \
  || "$py" -m pip install --quiet --disable-pip-version-check --no-deps "torchvision==0.26.0" >&2
# pytorch-metric-learning for the modern losses' comparison test, likewise without its
# dependencies (torch, numpy); its losses and miners import scipy.stats and tqdm through
# utils.common_functions, installed below (scikit-learn only serves its AccuracyCalculator).
"$py" -c "import pytorch_metric_learning as p; assert p.__version__ == '2.9.0'" 2>/dev/null \
  || "$py" -m pip install --quiet --disable-pip-version-check --no-deps "pytorch-metric-learning==2.9.0" >&2
# timm for the Vision Transformers' parity test and scripts/export_timm.py, without its
# dependencies (torch, torchvision, safetensors; huggingface_hub and pyyaml only serve downloads).
"$py" -c "import timm; assert timm.__version__ == '1.0.22'" 2>/dev/null \
  || "$py" -m pip install --quiet --disable-pip-version-check --no-deps "timm==1.0.22" >&2
# pretrainedmodels (Cadene) for the BN-Inception parity test and scripts/export_bninception.py,
# without its dependencies (torch, torchvision, tqdm); it imports munch.
"$py" -c "import pretrainedmodels as p; assert p.__version__ == '0.7.4'" 2>/dev/null \
  || "$py" -m pip install --quiet --disable-pip-version-check --no-deps "pretrainedmodels==0.7.4" "munch==4.0.0" >&2
need=()
"$py" -c "import scipy.stats" 2>/dev/null || need+=("scipy")
"$py" -c "import tqdm" 2>/dev/null || need+=("tqdm")
"$py" -c "import safetensors" 2>/dev/null || need+=("safetensors")
"$py" -c "import pyarrow" 2>/dev/null || need+=("pyarrow")
"$py" -c "import polars" 2>/dev/null || need+=("polars")
"$py" -c "import pandas" 2>/dev/null || need+=("pandas")
"$py" -c "import PIL" 2>/dev/null || need+=("pillow")
"$py" -c "import matplotlib" 2>/dev/null || need+=("matplotlib")
"$py" -c "import nbconvert, ipykernel" 2>/dev/null || need+=("nbconvert" "ipykernel")
"$py" -c "import tensorboard.backend.event_processing.event_accumulator" 2>/dev/null || need+=("tensorboard==2.21.0")
# onnx for `dml export --format onnx` (torch.onnx.export) and onnxruntime to run the result.
"$py" -c "import onnx" 2>/dev/null || need+=("onnx==1.23.2")
"$py" -c "import onnxruntime" 2>/dev/null || need+=("onnxruntime==1.32.0")
{ "$py" -c "import moto.server, boto3" 2>/dev/null && command -v moto_server >/dev/null; } || need+=("moto[server]")
if [ ${#need[@]} -gt 0 ]; then
  echo "installing into $(dirname "$py")/..: ${need[*]}" >&2
  "$py" -m pip install --quiet --disable-pip-version-check "${need[@]}" >&2
fi
# Fail here, naming the package, rather than in the middle of the tests.
"$py" -c "from pytorch_metric_learning import losses, miners, regularizers; import timm, torchvision; from pretrainedmodels.models.bninception import BNInception" \
  || { echo "python-extras: pytorch-metric-learning, timm, torchvision or pretrainedmodels does not import (above)" >&2; exit 1; }
