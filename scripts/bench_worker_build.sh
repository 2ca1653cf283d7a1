#!/usr/bin/env bash
# How long a clean release build of the training worker `dml-torch` takes, and how big it
# is: `scripts/bench_worker_build.sh [REV]` (default HEAD) checks REV out into a temporary
# worktree, builds the worker alone in an empty target dir, and prints the wall time, the
# number of crates compiled and the binary's size (and stripped). Run it for two revisions
# one after the other on an idle machine to compare them (a build takes 10-25 minutes on
# 2 cores). Before 0ce061b the worker was a binary of the `dml` package.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:-HEAD}
eval "$(scripts/bootstrap.sh)" >/dev/null
work=$(mktemp -d)
trap 'git worktree remove --force "$work/src" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add -q --detach "$work/src" "$rev"
cd "$work/src"
if [ -f torch/src/bin/dml-torch.rs ]; then
  args=(-p dml-torch --bin dml-torch)
else
  args=(-p dml --bin dml-torch)
fi
export CARGO_TARGET_DIR="$work/target"
start=$(date +%s.%N)
cargo build --release "${args[@]}" >"$work/build.log" 2>&1 || { tail -20 "$work/build.log"; exit 1; }
end=$(date +%s.%N)
strip -o "$work/stripped" "$CARGO_TARGET_DIR/release/dml-torch"
printf 'rev %s: cargo build --release %s\n' "$(git rev-parse --short HEAD)" "${args[*]}"
printf '  %.0f s, %d crates compiled, dml-torch %d bytes (%d stripped), load %s\n' \
  "$(echo "$end - $start" | bc)" "$(grep -c Compiling "$work/build.log")" \
  "$(stat -c %s "$CARGO_TARGET_DIR/release/dml-torch")" "$(stat -c %s "$work/stripped")" \
  "$(cut -d' ' -f1-3 /proc/loadavg)"
