# %% [markdown]
# # Exploring a `dml` run
#
# Opens the artifacts the last run of a name used, through the store's
# `latest/<run name>/<stage>` links: the index, the P×K plan, the training log,
# the embeddings, the retrieval and clustering metrics; plots the loss curve
# and draws the nearest neighbours of a few queries. The run's `report.html`
# (linked below) shows much of this without Python.
#
# Settings (environment variables):
#
# - `DML_STORE`: the store (default `dml-store`, like `dml` itself);
# - `DML_RUN`: the run name (default `synthetic`; `dml ls` and `runs/` show them);
# - `DML_POINT`: for a sweep, a part of the sweep point to pick, e.g.
#   `train.loss.name=npairs` (default: the first point);
# - `DML_QUERIES`: how many queries to draw (default 4);
# - `DML_NOTEBOOK_OUT`: where the figures are saved as PNG (default `.`).
#
# This file and `explore.ipynb` hold the same cells:
# `python notebooks/build_notebook.py` regenerates the notebook from this file.

# %%
import json
import os
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # run as a plain script: draw to files only
import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pyarrow.ipc as ipc
from PIL import Image

STORE = Path(os.environ.get("DML_STORE", "dml-store"))
RUN = os.environ.get("DML_RUN", "synthetic")
POINT = os.environ.get("DML_POINT", "")
QUERIES = int(os.environ.get("DML_QUERIES", "4"))
OUT = Path(os.environ.get("DML_NOTEBOOK_OUT", "."))
OUT.mkdir(parents=True, exist_ok=True)


def file_safe(name):
    """The run name as `dml` spells it on disk (`latest/<name>`, `runs/…-<name>.json`)."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)


RUN_DIR = STORE / "latest" / file_safe(RUN)
if not RUN_DIR.is_dir():
    known = sorted(p.name for p in (STORE / "latest").glob("*")) if (STORE / "latest").is_dir() else []
    raise SystemExit(f"no run `{RUN}` in {STORE}/latest (runs there: {known}); set DML_RUN / DML_STORE")


def candidates(stage):
    """The nodes of a stage in this run, the untrained baseline's left out."""
    names = sorted(p.name for p in RUN_DIR.iterdir())
    return [n for n in names if n == stage or (n.startswith(stage + "@") and n != stage + "@untrained")]


def point_of(node):
    """A sweep node's settings, `train@plan.k=2,train.seed=1` → {"plan.k=2", "train.seed=1"}."""
    return set(node.split("@", 1)[1].split(",")) if "@" in node else set()


# A sweep has one `train@<point>` per point: DML_POINT picks one (default: the first),
# and every other stage resolves to the node that point used.
trains = candidates("train")
chosen = [n for n in trains if POINT and POINT in n]
if POINT and not chosen:
    raise SystemExit(f"DML_POINT `{POINT}` matches none of {trains}")
TRAIN_NODE = (chosen or trains or ["train"])[0]
SWEEP_POINT = point_of(TRAIN_NODE)


def node_dir(stage):
    """`latest/<run>/<stage>`, or for a sweep the node of the chosen point."""
    nodes = candidates(stage)
    if not nodes:
        raise FileNotFoundError(f"no `{stage}` under {RUN_DIR}; it has {sorted(p.name for p in RUN_DIR.iterdir())}")
    return RUN_DIR / next((n for n in nodes if point_of(n) <= SWEEP_POINT), nodes[0])


def manifest(stage):
    return json.loads((node_dir(stage) / "manifest.json").read_text())


def save(fig, name):
    path = OUT / name
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"saved {path}")
    return path


print(f"run `{RUN}` in {STORE}" + (f", sweep point {TRAIN_NODE}" if SWEEP_POINT else "") + ":")
for p in sorted(RUN_DIR.iterdir()):
    print(f"  {p.name:<40} -> {os.readlink(p) if p.is_symlink() else p}")

# %% [markdown]
# ## The HTML report
#
# The report stage's `report.html` shows the same run without Python: the run
# table, Recall@K and loss curves, per-class Recall@1, retrieval grids beside
# the untrained network's, and the most-confused class pairs. It is one
# self-contained file: open it in a browser, or mail it.

# %%
try:
    REPORT_HTML = (node_dir("report") / "report.html").resolve()
except FileNotFoundError:  # the run stopped before its report (`--until`)
    REPORT_HTML = None
if REPORT_HTML is not None and REPORT_HTML.is_file():
    print(f"report: {REPORT_HTML.as_uri()}")
    if "ipykernel" in sys.modules:
        from IPython.display import HTML, display

        display(HTML(f'<a href="{REPORT_HTML.as_uri()}" target="_blank">open report.html</a> ({REPORT_HTML})'))
else:
    print(f"no report.html under {RUN_DIR}: the run stopped before its report")

# %% [markdown]
# ## The index: every image, its class and split

# %%
index = pl.read_parquet(node_dir("index") / "index.parquet")
print(index.head())
print(index.group_by("split").agg(pl.len().alias("images"), pl.col("class_id").n_unique().alias("classes")).sort("split"))

# %% [markdown]
# ## The plan: P×K batches, one row per slot

# %%
plan = pl.read_parquet(node_dir("plan") / "plan.parquet")
batches = plan.group_by("step").agg(
    pl.len().alias("images"), pl.col("class_id").n_unique().alias("P")
)
print(plan.head())
print(f"{batches.height} steps; images per batch {sorted(set(batches['images']))}, P {sorted(set(batches['P']))}")

# %% [markdown]
# ## The training log and the loss curve

# %%
log = pl.read_parquet(node_dir("train") / "train_log.parquet")
print(f"{node_dir('train').name}: {log.height} steps, plan {node_dir('plan').name}")
print(log.describe())
fig, (ax_loss, ax_dist) = plt.subplots(1, 2, figsize=(11, 3.5))
ax_loss.plot(log["step"], log["loss"], lw=1, label="loss")
if log.height >= 20:
    smooth = log["loss"].rolling_mean(window_size=max(5, log.height // 20))
    ax_loss.plot(log["step"], smooth, lw=2, label="rolling mean")
ax_loss.set_xlabel("step")
ax_loss.set_ylabel("loss")
train_settings = manifest("train")["settings"]["train"]
ax_loss.set_title(f"{RUN}: {train_settings['loss']['name']}, {train_settings['model']['backbone']}")
ax_loss.legend()
ax_dist.plot(log["step"], log["mean_pos_dist"], label="positive pairs")
ax_dist.plot(log["step"], log["mean_neg_dist"], label="negative pairs")
ax_dist.set_xlabel("step")
ax_dist.set_ylabel("mean distance")
ax_dist.legend()
save(fig, "loss.png")
plt.show()

# %% [markdown]
# ## The embeddings

# %%
table = ipc.open_file(node_dir("embed") / "embeddings.arrow").read_all()
emb_col = table.column("embedding").combine_chunks()
dim = emb_col.type.list_size
X = emb_col.flatten().to_numpy().reshape(table.num_rows, dim)
emb = pl.from_arrow(table.drop_columns(["embedding"]))
norms = np.linalg.norm(X, axis=1)
print(f"{table.num_rows} embeddings of dimension {dim}; norms {norms.min():.3f}…{norms.max():.3f}")
print(emb.group_by("split").len().sort("split"))

# Two principal components, coloured by class.
centered = X - X.mean(0)
_, _, vt = np.linalg.svd(centered, full_matrices=False)
xy = centered @ vt[:2].T
fig, ax = plt.subplots(figsize=(5, 5))
ax.scatter(xy[:, 0], xy[:, 1], c=emb["class_id"].to_numpy() % 20, cmap="tab20", s=12)
ax.set_title("embeddings, first two principal components")
save(fig, "embeddings.png")
plt.show()

# %% [markdown]
# ## Metrics: retrieval (Recall@K, MAP@R, R-precision) and clustering (NMI)

# %%
metrics = {}
for stage in ("retrieve", "cluster"):
    metrics.update(json.loads((node_dir(stage) / "metrics.json").read_text()))
with pl.Config(tbl_rows=-1):
    print(pl.DataFrame({"metric": list(metrics), "value": [str(v) for v in metrics.values()]}))

# %% [markdown]
# ## Nearest neighbours of a few queries
#
# Image paths in the index are relative to the dataset root: for the synthetic
# set that is the synth stage's `images/`, otherwise the `dataset_root` the
# index stage noted in its manifest.

# %%
if (RUN_DIR / "synth").is_dir():
    image_root = node_dir("synth") / "images"
else:
    image_root = Path(manifest("index")["notes"]["dataset_root"])
print(f"images under {image_root}")

neighbors = pl.read_parquet(node_dir("retrieve") / "neighbors.parquet")
info = index.select("image_id", "path", "class_id")
# One query from each of the first few classes.
queries = (
    neighbors.select("query_image_id")
    .unique(maintain_order=True)
    .join(info.rename({"image_id": "query_image_id"}), on="query_image_id")
    .unique("class_id", keep="first", maintain_order=True)
    .head(QUERIES)["query_image_id"]
    .to_list()
)
shown = neighbors.filter(pl.col("query_image_id").is_in(queries) & (pl.col("rank") <= 5))
shown = shown.join(info.rename({"image_id": "neighbor_image_id", "path": "neighbor_path", "class_id": "neighbor_class"}), on="neighbor_image_id")
shown = shown.join(info.rename({"image_id": "query_image_id"}), on="query_image_id")
columns = 1 + int(shown["rank"].max())


def thumb(rel):
    with Image.open(image_root / rel) as im:
        return np.asarray(im.convert("RGB"))


fig, axes = plt.subplots(len(queries), columns, figsize=(1.8 * columns, 1.9 * len(queries)), squeeze=False)
for row, q in enumerate(queries):
    rows = shown.filter(pl.col("query_image_id") == q).sort("rank")
    first = rows.row(0, named=True)
    axes[row][0].imshow(thumb(first["path"]))
    axes[row][0].set_title(f"query {q}\nclass {first['class_id']}", fontsize=8)
    for r in rows.iter_rows(named=True):
        ax = axes[row][r["rank"]]
        ax.imshow(thumb(r["neighbor_path"]))
        hit = r["neighbor_class"] == r["class_id"]
        ax.set_title(f"#{r['rank']} d={r['distance']:.2f}\nclass {r['neighbor_class']}", fontsize=8, color="green" if hit else "red")
        for side in ax.spines.values():
            side.set_edgecolor("green" if hit else "red")
            side.set_linewidth(3)
for ax in np.ravel(axes):
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle(f"{RUN}: nearest neighbours (green: same class)")
save(fig, "neighbors.png")
plt.show()
