#!/usr/bin/env python3
"""Builds notebooks/explore.ipynb from the cells of notebooks/explore.py.

    python notebooks/build_notebook.py           # rewrite explore.ipynb
    python notebooks/build_notebook.py --check   # exit 1 if explore.ipynb is stale

The script is the source: cells start at lines `# %%` (code) or `# %% [markdown]`
(markdown, each line's leading `# ` removed). The notebook is written without
outputs, with stable cell ids, so it only changes when the script does. Uses the
standard library only.
"""
import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "explore.py"
TARGET = HERE / "explore.ipynb"


def cells(text):
    out = []
    kind, lines = None, []

    def flush():
        if kind is None:
            return
        while lines and not lines[-1].strip():
            lines.pop()
        if kind == "markdown":
            body = [l[2:] if l.startswith("# ") else l.lstrip("#") for l in lines]
        else:
            body = lines
        source = [l + "\n" for l in body]
        if source:
            source[-1] = source[-1][:-1]
        cell = {"cell_type": kind, "id": f"cell-{len(out):02d}", "metadata": {}, "source": source}
        if kind == "code":
            cell["execution_count"] = None
            cell["outputs"] = []
        out.append(cell)

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind = "markdown" if "[markdown]" in line else "code"
            lines = []
        elif kind is not None:
            lines.append(line)
    flush()
    return out


def notebook(text):
    nb = {
        "cells": cells(text),
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that the notebook is up to date")
    args = ap.parse_args()
    want = notebook(SOURCE.read_text(encoding="utf-8"))
    if args.check:
        have = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if have != want:
            print(f"{TARGET} is stale: run python {Path(__file__).name}", file=sys.stderr)
            sys.exit(1)
        return
    TARGET.write_text(want, encoding="utf-8")
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
