#!/usr/bin/env bash
# Benchmark (not a test): a no-op rerun over an SOP-sized tree.
# Writes 120,053 small PNG files in Stanford Online Products' on-disk format
# (Ebay_train.txt / Ebay_test.txt), indexes them once (first run: reads every
# file), then times `dml run --until index` again (no-op: stat cache hits) and
# compares the first index's read rate with `cat` over the same files.
#   scripts/bench_noop.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/bootstrap.sh)"
cargo build --release --bin dml >&2
dml="$CARGO_TARGET_DIR/release/dml"
dir="${1:-$(mktemp -d)}"
root="$dir/sop"
store="$dir/store"
if [ ! -f "$root/Ebay_test.txt" ]; then
  python3 - "$root" <<'PY'
import os, struct, sys, zlib
root = sys.argv[1]
def png(seed):
    raw = b"".join(b"\x00" + bytes((seed * 7 + x * 13 + y) % 256 for x in range(8 * 3)) for y in range(8))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
n_train, n_test = 59551, 60502
classes_train, classes_test = 11318, 11316
for name, n, nc, c0 in (("train", n_train, classes_train, 1), ("test", n_test, classes_test, classes_train + 1)):
    lines = ["image_id class_id super_class_id path"]
    for i in range(n):
        cls = c0 + i % nc
        rel = f"{name}_{cls // 1000:02d}/{cls:05d}_{i}.png"
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(png(i))
        lines.append(f"{i + 1} {cls} {1 + cls % 12} {rel}")
    with open(os.path.join(root, f"Ebay_{name}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
PY
fi
files=$(find "$root" -type f | wc -l)
bytes=$(du -sb "$root" | cut -f1)
args=(--store "$store" run --until index --set 'dataset.kind="sop"' --set "dataset.root=$root")
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
t0=$(date +%s.%N); "$dml" "${args[@]}" >/dev/null 2>&1; t1=$(date +%s.%N)
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
c0=$(date +%s.%N); find "$root" -type f -print0 | xargs -0 cat > /dev/null; c1=$(date +%s.%N)
for i in 1 2 3; do
  n0=$(date +%s.%N); "$dml" "${args[@]}" >/dev/null 2>&1; n1=$(date +%s.%N)
  echo "no-op rerun $i: $(echo "$n1 - $n0" | bc) s"
done
s0=$(date +%s.%N); "$dml" presets >/dev/null; s1=$(date +%s.%N)
echo "files: $files ($((bytes / 1024 / 1024)) MiB)"
echo "first index (hash + header read): $(echo "$t1 - $t0" | bc) s, $(echo "scale=1; $bytes / 1048576 / ($t1 - $t0)" | bc) MB/s"
echo "cat of the same files: $(echo "$c1 - $c0" | bc) s, $(echo "scale=1; $bytes / 1048576 / ($c1 - $c0)" | bc) MB/s"
echo "process start alone (dml presets): $(echo "$s1 - $s0" | bc) s"
