#!/usr/bin/env bash
# Installs libtorch 2.11.0 (PyPI's torch==2.11.0 wheel, which is exactly the
# libtorch that tch 0.24.0 binds) once into a cache outside the checkout, and
# prints the environment that builds `dml` against it.
#
#   eval "$(scripts/bootstrap.sh)"
#
# A download that failed or was cut off is noticed (no `.complete` marker) and
# redone from scratch; it is never left half-installed.
set -euo pipefail
cache="${DML_CACHE:-$HOME/.cache/dml}"
venv="$cache/torch-2.11.0"
mkdir -p "$cache"
if [ -n "${LIBTORCH:-}" ]; then
  echo "export LIBTORCH=$LIBTORCH"
else
  if [ ! -f "$venv/.complete" ]; then
    echo "dml: installing libtorch 2.11.0 (pip torch==2.11.0, ~4.6 GB) into $venv" >&2
    rm -rf "$venv" "$venv.partial"
    python3 -m venv "$venv.partial"
    "$venv.partial/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.11.0 numpy >&2
    mv "$venv.partial" "$venv"
    # The venv was created under another name: make its python usable as-is.
    "$venv/bin/python" -c "import torch; assert torch.__version__.startswith('2.11.0'), torch.__version__" >&2
    touch "$venv/.complete"
  fi
  echo "export PATH=$venv/bin:\$PATH"
  echo "export LIBTORCH_USE_PYTORCH=1"
fi
echo "export CARGO_TARGET_DIR=\${CARGO_TARGET_DIR:-$cache/target}"
