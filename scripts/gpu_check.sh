#!/usr/bin/env bash
# A measured CUDA run of dml next to PyTorch eager on the same GPU (issue 11, item 5).
#
#   scripts/gpu_check.sh build    # here: stripped dml and dml-torch, xz-compressed into gpu-check/
#   scripts/gpu_check.sh device   # on the GPU machine (after `build`, carrying gpu-check/)
#   scripts/gpu_check.sh --cpu    # both parts on this CPU with tiny step counts: proves the
#                                 # script works up to the device part
#
# The device part unpacks the binaries, points the worker at the libtorch of the machine's PyTorch
# (DML_TORCH_PYTHON, default /opt/torch/.venv/bin/python: its torch/lib goes on
# LD_LIBRARY_PATH), says whether CUDA is found, trains STEPS steps (50) each of ResNet-50
# and Inception V1 at 224 px, batch 120 (P20×K6), f32 and bf16, through the real pipeline
# (`dml run --until train`: decode cache, loader, pinned copies), printing img/s and the
# mean seconds a step waited for data; times the same model and batch in PyTorch eager
# (scripts/bench_train_pytorch.py) for the ratio; and runs the default `dml run` end to end.
# The two binaries are ~60 MB stripped, near the 64 MiB that may be carried to the device
# machine, hence the compression (xz: Python's lzma can unpack it where xz is missing).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$here/gpu-check"
mode="${1:-}"

build() {
  cd "$here"
  if [ -z "${LIBTORCH_USE_PYTORCH:-}${LIBTORCH:-}" ]; then eval "$(scripts/bootstrap.sh)"; fi
  local target="${CARGO_TARGET_DIR:-$HOME/.cache/dml/target}"
  cargo build --release -p dml -p dml-torch --bins >&2
  mkdir -p "$out"
  local stage; stage="$(mktemp -d)"
  strip -o "$stage/dml" "$target/release/dml"
  strip -o "$stage/dml-torch" "$target/release/dml-torch"
  rm -f "$out/dml.xz" "$out/dml.tar.xz"
  tar -C "$stage" -cf - dml dml-torch | xz -6 -T0 > "$out/dml.tar.xz"
  rm -rf "$stage"
  echo "gpu_check: $(du -h "$out/dml.tar.xz" | cut -f1) compressed binaries in $out/dml.tar.xz" >&2
}

# Mean of a JSON number at a dotted path in a manifest.
note() { python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['notes'].get(sys.argv[2], 'n/a'))" "$1" "$2"; }

device() {
  local cpu="${1:-}"
  local py="${DML_TORCH_PYTHON:-/opt/torch/.venv/bin/python}"
  if [ -n "$cpu" ] && [ ! -x "$py" ]; then py="$(command -v python3)"; fi
  [ -x "$py" ] || { echo "gpu_check: no PyTorch Python at $py (set DML_TORCH_PYTHON)" >&2; exit 1; }
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "$py" -c "import lzma,tarfile,sys; tarfile.open(fileobj=lzma.open(sys.argv[1])).extractall(sys.argv[2])" "$out/dml.tar.xz" "$work"
  chmod +x "$work/dml" "$work/dml-torch"
  local torchlib; torchlib="$("$py" -c 'import os,torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
  export LD_LIBRARY_PATH="$torchlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  "$py" -c 'import torch; print("PyTorch", torch.__version__, "CUDA available:", torch.cuda.is_available(), "devices:", torch.cuda.device_count(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
  local dml="$work/dml --store $work/store"
  local steps=50 p=20 k=6 dev=auto pysteps=50 warm=5 threads
  threads="$(nproc)"
  if [ -n "$cpu" ]; then steps=2 p=4 k=2 dev=cpu pysteps=2 warm=1; fi
  local batch=$((p * k))
  printf '%-13s %-5s %10s %12s %14s %12s %8s\n' model prec "dml img/s" "data_wait_s" "wait/step %" "torch img/s" ratio
  for model in resnet50 inception_v1; do
    for prec in f32 bf16; do
      local cfg="$work/$model-$prec.toml"
      cat > "$cfg" <<TOML
name = "gpu-check-$model-$prec"
[dataset]
kind = "synthetic"
[image]
resize = 256
crop = 224
[plan]
p = $p
k = $k
steps = $steps
[train]
device = "$dev"
precision = "$prec"
checkpoint_every = 100000
[train.model]
backbone = "$model"
TOML
      if ! $dml run "$cfg" --until train > "$work/log" 2>&1; then
        if [ -n "$cpu" ] && [ "$prec" = bf16 ] && grep -q "avx512_bf16" "$work/log"; then
          echo "$model bf16: refused on this CPU (no AVX512-BF16), as designed"; continue
        fi
        cat "$work/log" >&2; exit 1
      fi
      local m; m="$($dml path train --name "gpu-check-$model-$prec")/manifest.json"
      local kind; kind="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['settings']['train']['device'])" "$m")"
      [ "$kind" = cuda ] || [ -n "$cpu" ] || { echo "gpu_check: dml trained on $kind, not CUDA" >&2; exit 1; }
      local ips wait frac
      ips="$(note "$m" steady_images_per_second)"; wait="$(note "$m" mean_data_wait_s)"; frac="$(note "$m" data_wait_fraction)"
      local tj; tj="$("$py" "$here/scripts/bench_train_pytorch.py" --device "$([ -n "$cpu" ] && echo cpu || echo cuda)" \
        --model "$model" --size 224 --batch "$batch" --precision "$prec" --steps "$pysteps" --warmup "$warm" --threads "$threads")"
      local tips; tips="$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['images_per_sec'])" "$tj")"
      python3 - "$model" "$prec" "$ips" "$wait" "$frac" "$tips" "$kind" <<'PY'
import sys
model, prec, ips, wait, frac, tips, kind = sys.argv[1:]
ips, wait, frac, tips = float(ips), float(wait), float(frac), float(tips)
print(f"{model:<13} {prec:<5} {ips:>10.1f} {wait:>12.4f} {100*frac:>13.1f}% {tips:>12.1f} {ips/tips:>7.2f}x  (dml on {kind})")
PY
    done
  done
  echo "default dml run:"
  local extra=()
  if [ -n "$cpu" ]; then extra=(--set train.device=cpu --set plan.steps=20); fi
  $dml run "${extra[@]}" > "$work/run.log" 2>&1 || { cat "$work/run.log" >&2; exit 1; }
  local report; report="$($dml path report)/report.md"
  grep -A2 "| run |" "$report" | grep -v -- "| --- |" || head -20 "$report"
  echo "gpu_check: done"
}

case "$mode" in
  build) build ;;
  device) device ;;
  --cpu) build; device cpu ;;
  *) echo "usage: scripts/gpu_check.sh build | device | --cpu" >&2; exit 2 ;;
esac
