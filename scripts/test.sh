#!/usr/bin/env bash
# The test command: installs what is missing (libtorch and the Python packages
# the comparison tests use, into the cached venv), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/bootstrap.sh)"
scripts/python-extras.sh
cargo fmt --all -- --check
cargo test --release --workspace "$@"
