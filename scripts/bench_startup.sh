#!/usr/bin/env bash
# Start-up and `dml eval` at CUB scale, as whole processes, next to faiss.
#
#   scripts/bench_startup.sh [DML] [--before OLD_DML] [--runs N]
#
# DML defaults to target/release/dml. Times each command N times (default 7) with
# /usr/bin/time and prints the median wall seconds and peak RSS:
#   dml presets, dml ls (empty store), dml run --dry-run (default preset), and
#   dml eval on CUB-scale embeddings (5,924 × 512, 100 classes, leave-one-out:
#   all metrics, Recall@{1,2,4,8} alone from Parquet and from Arrow IPC (what
#   the embed stage writes), and NMI alone) —
# and, on the same file, a Python process doing the retrieval part with faiss
# IndexFlatL2 (k = 9 neighbours, the query itself dropped, Recall@K in numpy;
# needs faiss-cpu and pyarrow in $PYTHON), with the time inside faiss printed too.
# --before OLD_DML runs the same commands with another build (one that loads
# libtorch at start) for the before/after figures in the README.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dml="${CARGO_TARGET_DIR:-$here/target}/release/dml"
before=""
runs=7
while [ $# -gt 0 ]; do
  case "$1" in
    --before) before="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    *) dml="$1"; shift ;;
  esac
done
py="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

"$py" - <<'EOF'
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
rng = np.random.default_rng(0)
n, d, classes = 5924, 512, 100
labels = np.sort(rng.integers(0, classes, n))
centres = rng.normal(size=(classes, d)).astype(np.float32)
x = centres[labels] + 3.0 * rng.normal(size=(n, d)).astype(np.float32)
emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)
table = pa.table({"class_id": labels.astype(np.int64), "embedding": emb})
pq.write_table(table, "cub_scale.parquet")
with pa.ipc.new_file("cub_scale.arrow", table.schema) as w:  # what the embed stage writes
    w.write_table(table)
np.save("x.npy", x); np.save("y.npy", labels)
EOF

cat > faiss_recall.py <<'EOF'
import sys, time
import numpy as np, pyarrow.parquet as pq, faiss
t = pq.read_table(sys.argv[1])
x = np.asarray(t.column("embedding").combine_chunks().flatten()).reshape(t.num_rows, -1).astype(np.float32)
y = t.column("class_id").to_numpy()
start = time.perf_counter()
index = faiss.IndexFlatL2(x.shape[1]); index.add(x)
_, nn = index.search(x, 9)
nn = nn[:, 1:]
hits = y[nn] == y[:, None]
recall = {k: float(hits[:, :k].any(1).mean()) for k in (1, 2, 4, 8)}
print(f"faiss search + Recall@K inside the process: {time.perf_counter() - start:.3f} s  R@1 {recall[1]:.4f}", file=sys.stderr)
EOF

measure() { # label, command...
  local label="$1"; shift
  local walls=() rss=()
  for _ in $(seq "$runs"); do
    # Wall time from bash's microsecond clock (/usr/bin/time's %e has 10 ms steps);
    # peak RSS from /usr/bin/time.
    local t0=$EPOCHREALTIME
    /usr/bin/time -f '%M' -o t.txt "$@" >/dev/null 2>err.txt || { cat err.txt >&2; return 1; }
    local t1=$EPOCHREALTIME
    walls+=("$(echo "$t1 - $t0" | bc -l)"); rss+=("$(cat t.txt)")
  done
  local mw mr
  mw="$(printf '%s\n' "${walls[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p")"
  mr="$(printf '%s\n' "${rss[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p")"
  printf '%-46s %7.3f s  %7.1f MiB\n' "$label" "$mw" "$(echo "$mr / 1024" | bc -l)"
}

suite() { # binary, tag
  local bin="$1" tag="$2"
  measure "$tag dml presets" "$bin" presets
  measure "$tag dml ls (empty store)" "$bin" --store "$work/empty" ls
  measure "$tag dml run --dry-run" "$bin" --store "$work/empty" run --dry-run
  measure "$tag dml eval, all metrics" "$bin" eval cub_scale.parquet
  measure "$tag dml eval, Recall@K only" "$bin" eval cub_scale.parquet --metrics recall
  measure "$tag dml eval, Recall@K only, Arrow IPC" "$bin" eval cub_scale.arrow --metrics recall
  measure "$tag dml eval, NMI (k-means, k = 100)" "$bin" eval cub_scale.parquet --metrics nmi
}

echo "median of $runs runs, whole processes (wall seconds, peak RSS)"
suite "$dml" "now:   "
if [ -n "$before" ]; then
  suite "$before" "before:"
fi
if "$py" -c 'import faiss' 2>/dev/null; then
  measure "python + faiss IndexFlatL2, Recall@K" "$py" faiss_recall.py cub_scale.parquet
  "$py" faiss_recall.py cub_scale.parquet
else
  echo "(faiss is not installed in $py: pip install faiss-cpu)"
fi
