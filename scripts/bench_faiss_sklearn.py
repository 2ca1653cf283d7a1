#!/usr/bin/env python3
"""Reference timings for `cargo bench -p dml-metrics --bench sop_scale`.

Runs, on the embeddings and labels the benchmark wrote (.npy), the same jobs
as dml-metrics with the usual Python tools, and prints one JSON object per
line on stdout (`{"task": ..., "seconds": ..., ...metrics}`):

* faiss IndexFlatIP and IndexFlatL2: leave-one-out search of k+1 neighbours
  (the query itself is among them), then Recall@K and MAP@R in numpy;
* optionally torch: blocked matmul + topk, the same scoring;
* faiss Kmeans (niter=20, faiss's default random-sample initialisation), then
  NMI with scikit-learn;
* scikit-learn KMeans(n_clusters=k, random_state=0, n_init=1) (k-means++,
  Lloyd to convergence), then NMI. This one takes minutes at SOP scale:
  --skip-sklearn leaves it out.

Timings cover the search/fit and the scoring, not loading the files.
Threads are pinned with --threads (faiss.omp_set_num_threads,
torch.set_num_threads, threadpoolctl for scikit-learn).
"""
import argparse
import json
import os
import sys
import time


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def emit(**record):
    print(json.dumps(record), flush=True)


def drop_self(idx):
    """Leave-one-out: remove each row's own index (wherever it ranks, or the
    last column if the search did not return it)."""
    import numpy as np

    n, width = idx.shape
    is_self = idx == np.arange(n)[:, None]
    keep = ~is_self
    keep[~is_self.any(axis=1), width - 1] = False
    return idx[keep].reshape(n, width - 1)


def score(neighbours, labels, ks):
    """Recall@K (hit if any of the K nearest shares the label) over all
    queries; MAP@R and R-precision over queries with R >= 1."""
    import numpy as np

    n = labels.shape[0]
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1
    out = {}
    first_hit = np.full(n, np.iinfo(np.int64).max)
    chunk = 4096
    max_r = int(r.max())
    ap = np.zeros(n)
    rp = np.zeros(n)
    for s in range(0, n, chunk):
        rel = labels[neighbours[s : s + chunk]] == labels[s : s + chunk, None]
        any_hit = rel.any(axis=1)
        first_hit[s : s + chunk] = np.where(any_hit, rel.argmax(axis=1), first_hit[s : s + chunk])
        rr = r[s : s + chunk]
        relr = rel[:, :max_r]
        within = np.arange(max_r)[None, :] < rr[:, None]
        hits = np.cumsum(relr & within, axis=1)
        prec = hits / np.arange(1, max_r + 1)[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[s : s + chunk] = np.where(rr > 0, (prec * (relr & within)).sum(axis=1) / rr, 0.0)
            rp[s : s + chunk] = np.where(rr > 0, (relr & within).sum(axis=1) / rr, 0.0)
    for k in ks:
        out[f"R@{k}"] = float((first_hit < k).mean())
    has = r > 0
    out["MAP@R"] = float(ap[has].mean()) if has.any() else 0.0
    out["R-precision"] = float(rp[has].mean()) if has.any() else 0.0
    out["queries_without_positives"] = int((~has).sum())
    return out


def faiss_search(x, labels, ks, kind):
    import faiss

    depth = max(ks) + 1
    t = time.perf_counter()
    index = faiss.IndexFlatIP(x.shape[1]) if kind == "IP" else faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, idx = index.search(x, depth)
    metrics = score(drop_self(idx), labels, ks)
    return time.perf_counter() - t, metrics


def torch_search(x, labels, ks, block=4096):
    import numpy as np
    import torch

    depth = max(ks) + 1
    t = time.perf_counter()
    xt = torch.from_numpy(x)
    sq = (xt * xt).sum(1)
    idx = np.empty((x.shape[0], depth), dtype=np.int64)
    for s in range(0, x.shape[0], block):
        q = xt[s : s + block]
        d = sq[s : s + block, None] + sq[None, :] - 2.0 * (q @ xt.T)
        idx[s : s + block] = torch.topk(d, depth, dim=1, largest=False).indices.numpy()
    metrics = score(drop_self(idx), labels, ks)
    return time.perf_counter() - t, metrics


def faiss_kmeans(x, labels, k, niter, seed):
    import faiss
    from sklearn.metrics import normalized_mutual_info_score

    t = time.perf_counter()
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False)
    km.train(x)
    _, assign = km.index.search(x, 1)
    nmi = normalized_mutual_info_score(labels, assign[:, 0])
    return time.perf_counter() - t, {"NMI": float(nmi), "iterations": niter}


def sklearn_kmeans(x, labels, k, threads):
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        t = time.perf_counter()
        km = KMeans(n_clusters=k, random_state=0, n_init=1).fit(x)
        nmi = normalized_mutual_info_score(labels, km.labels_)
        elapsed = time.perf_counter() - t
    return elapsed, {"NMI": float(nmi), "iterations": int(km.n_iter_), "inertia": float(km.inertia_)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embeddings", required=True, help="float32 (n, d) .npy")
    ap.add_argument("--labels", required=True, help="integer (n,) .npy")
    ap.add_argument("--ks", default="1,10,100,1000")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--faiss-niter", type=int, default=20)
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args()

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    import faiss

    faiss.omp_set_num_threads(args.threads)
    x = np.ascontiguousarray(np.load(args.embeddings), dtype=np.float32)
    labels = np.load(args.labels).astype(np.int64)
    ks = [int(k) for k in args.ks.split(",")]
    k_clusters = int(np.unique(labels).shape[0])
    log(f"python reference: {x.shape[0]} x {x.shape[1]}, {k_clusters} classes, {args.threads} threads")

    for kind in ("IP", "L2"):
        log(f"faiss IndexFlat{kind} search k={max(ks) + 1} ...")
        secs, m = faiss_search(x, labels, ks, kind)
        emit(task=f"faiss IndexFlat{kind} k={max(ks) + 1} + scoring", seconds=secs, **m)
    if not args.skip_torch:
        import torch

        torch.set_num_threads(args.threads)
        log("torch blocked matmul + topk ...")
        secs, m = torch_search(x, labels, ks)
        emit(task=f"torch matmul+topk k={max(ks) + 1} + scoring", seconds=secs, **m)
    log(f"faiss Kmeans k={k_clusters} niter={args.faiss_niter} ...")
    secs, m = faiss_kmeans(x, labels, k_clusters, args.faiss_niter, 1234)
    emit(task=f"faiss Kmeans niter={args.faiss_niter} + NMI", seconds=secs, **m)
    if not args.skip_sklearn:
        log(f"scikit-learn KMeans k={k_clusters} (k-means++, n_init=1) ...")
        secs, m = sklearn_kmeans(x, labels, k_clusters, args.threads)
        emit(task="sklearn KMeans k-means++ + NMI", seconds=secs, **m)


if __name__ == "__main__":
    main()
