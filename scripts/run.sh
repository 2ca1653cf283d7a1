#!/usr/bin/env bash
# The main job: installs libtorch if missing, builds `dml`, and runs it
# (`scripts/run.sh` alone runs the built-in synthetic experiment).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/bootstrap.sh)"
cargo build --release -p dml -p dml-torch --bins
exec "$CARGO_TARGET_DIR/release/dml" "${@:-run}"
