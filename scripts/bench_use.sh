#!/usr/bin/env bash
# Figures for using a trained network (README, "Using a trained network"), in one run:
#  1. `dml embed` images/s vs the same network in PyTorch eager (scripts/bench_embed_pytorch.py,
#     rebuilt from `dml export`'s safetensors by load_model.py), same images (JPEG), same
#     preprocessing and batch size, on this CPU; each timed from the command's start (model
#     load included) and, for dml, also the worker's own embedding time.
#  2. `dml search` over an SOP-sized gallery: 60,502 random 128-d embeddings in a Parquet
#     file, one query image: the exact k-NN time (dml's log line) and the whole command.
#
# usage: scripts/bench_use.sh [WORKDIR] [BACKBONE] [IMAGES_PER_CLASS]
# (default: a temporary folder, resnet18 at 256 → 224, 20 classes × 20 images).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
eval "$(scripts/bootstrap.sh)"
work=${1:-$(mktemp -d)}
backbone=${2:-resnet18}
per_class=${3:-20}
mkdir -p "$work"
dml=${DML:-${CARGO_TARGET_DIR:-$HOME/.cache/dml/target}/release/dml}
store="$work/store"
cat > "$work/bench.toml" <<TOML
name = "bench"
[dataset]
kind = "synthetic"
[synthetic]
classes = 20
images_per_class = $per_class
image_size = 300
[image]
resize = 256
crop = 224
[plan]
p = 2
k = 2
steps = 2
[train]
device = "cpu"
[train.model]
backbone = "$backbone"
embedding_dim = 128
[embed]
batch_size = 32
[report]
untrained_baseline = false
TOML
echo "training a $backbone for 2 steps (only to have a network) ..." >&2
"$dml" --store "$store" run "$work/bench.toml" > /dev/null
images=$(readlink -f "$store/latest/bench/synth/images")
"$dml" --store "$store" export --run bench --out "$work/export" --format safetensors 2> /dev/null
n=$(find "$images" -type f | wc -l)
echo "== embedding $n JPEGs (300×300 → 256 → 224), $backbone, batch 32, $(nproc) cores" >&2
t0=$(date +%s.%N)
DML_LOG_INTERVAL=1000 "$dml" -v --store "$store" embed --run bench --dir "$images" --out "$work/emb.parquet" 2> "$work/embed.log"
t1=$(date +%s.%N)
dml_s=$(echo "$t1 - $t0" | bc -l)
worker=$(grep -o 'embedded [0-9]* images in [0-9.]*s ([0-9]* images/s)' "$work/embed.log" | head -1)
python3 scripts/bench_embed_pytorch.py "$work/export" "$images" 32 > "$work/pytorch.txt"
py_s=$(awk '/pytorch_seconds/ {print $2}' "$work/pytorch.txt")
printf 'dml embed:       %d images in %.2f s = %.1f images/s (whole command; worker: %s)\n' "$n" "$dml_s" "$(echo "$n / $dml_s" | bc -l)" "$worker"
printf 'PyTorch eager:   %d images in %.2f s = %.1f images/s (model load to last batch)\n' "$n" "$py_s" "$(echo "$n / $py_s" | bc -l)"

echo "== dml search over 60,502 random 128-d embeddings" >&2
python3 - "$work/sop_gallery.parquet" <<'PY'
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
rng = np.random.default_rng(0)
n, d = 60502, 128
e = rng.standard_normal((n, d), dtype=np.float32)
e /= np.linalg.norm(e, axis=1, keepdims=True)
emb = pa.FixedSizeListArray.from_arrays(pa.array(e.reshape(-1)), d)
pq.write_table(pa.table({"path": [f"sop/{i}.jpg" for i in range(n)], "class": [str(i // 5) for i in range(n)], "embedding": emb}), sys.argv[1])
PY
query=$(find "$images" -type f | sort | head -1)
for i in 1 2 3; do
  t0=$(date +%s.%N)
  DML_LOG_INTERVAL=1000 "$dml" -v --store "$store" search --run bench --gallery "$work/sop_gallery.parquet" -k 10 "$query" > /dev/null 2> "$work/search.log"
  t1=$(date +%s.%N)
  knn=$(grep -o 'searched 1 queries over 60502 gallery items in [0-9.]* ms' "$work/search.log")
  printf 'dml search #%d: %s; whole command %.2f s (reading the 31 MB gallery, the worker embedding the query)\n' "$i" "$knn" "$(echo "$t1 - $t0" | bc -l)"
done
