#!/usr/bin/env bash
# Benchmark (not a test): the default synthetic run built in one store, then
# fetched into an empty one from a shared remote cache (moto's S3 server on
# 127.0.0.1, started and stopped here). Prints both wall times.
#   scripts/bench_remote.sh [DIR [--set plan.steps=40 …]]
# With BASELINE=PATH (the `dml` binary of another build, e.g. one whose files move
# one or 8 at a time), the fetch is timed ROUNDS times (default 3) with each
# build, alternating, each into an empty store, from the same bucket.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/bootstrap.sh)"
scripts/python-extras.sh
cargo build --release -p dml -p dml-torch --bins >&2
dml="$CARGO_TARGET_DIR/release/dml"
dir="${1:-$(mktemp -d)}"
shift || true
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
  sleep 0.2
done
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench DML_REMOTE=s3://dml-bench/team
python3 -c "import boto3; boto3.client('s3', endpoint_url='$AWS_ENDPOINT_URL').create_bucket(Bucket='dml-bench')"
# Share every stage, the decode cache included, so the second store builds nothing.
printf 'preset = "synthetic"\n[store]\nremote_skip = []\n' >"$dir/bench.toml"
rm -rf "$dir/a" "$dir/b"
t0=$(date +%s.%N)
"$dml" --store "$dir/a" run "$dir/bench.toml" "$@" >/dev/null
t1=$(date +%s.%N)
"$dml" --store "$dir/b" run "$dir/bench.toml" "$@" >/dev/null
t2=$(date +%s.%N)
cmp "$dir/a/latest/synthetic/embed/embeddings.arrow" "$dir/b/latest/synthetic/embed/embeddings.arrow"
bytes=$(du -sb "$dir/b/objects" | cut -f1)
python3 -c "print(f'build + upload: {$t1 - $t0:.1f} s; fetch into an empty store: {$t2 - $t1:.1f} s ({$bytes / 1e6:.1f} MB of artifacts); embeddings byte-identical')"
if [ -n "${BASELINE:-}" ]; then
  # Each fetch must build nothing: the worker is not needed (and may be missing
  # beside the baseline's dml).
  for round in $(seq "${ROUNDS:-3}"); do
    for which in this baseline; do
      bin=$dml
      [ "$which" = baseline ] && bin=$BASELINE
      rm -rf "$dir/c"
      s0=$(date +%s.%N)
      "$bin" --store "$dir/c" run "$dir/bench.toml" "$@" >/dev/null
      s1=$(date +%s.%N)
      cmp "$dir/a/latest/synthetic/embed/embeddings.arrow" "$dir/c/latest/synthetic/embed/embeddings.arrow"
      python3 -c "print(f'round $round, $which build ($bin): fetch into an empty store: {$s1 - $s0:.1f} s')"
    done
  done
fi
