#!/usr/bin/env python3
"""Goldens for `tasks/cluster`: scikit-learn's KMeans (algorithm="lloyd") on small float32 data sets.

Two kinds of fixtures (tasks/cluster/tests/fixtures/):
  * lloyd.json + lloyd_*.npy — Lloyd from a GIVEN init: `KMeans(init=array, n_init=1,
    algorithm="lloyd", max_iter, tol).fit(X)`; the Rust `cluster::lloyd_from` must reproduce labels
    exactly and centres / inertia / n_iter. The cases cover strict convergence, tolerance-based
    stopping, the max_iter cut and an empty cluster (one init centre far from all data, which sklearn
    relocates to the farthest point).
  * plusplus.json + pp_*.npy — full k-means++ with restarts. The init is random and our RNG cannot be
    sklearn's, so statistics are recorded, not bits: the best inertia of `n_init=10` for
    random_state 0..4, the mean/std of the k-means++ init potential and of single-run final inertia
    over many seeds, and NMI/ARI/FMI against the generating classes.

Every data set is also fitted in float64 from the same init; a case whose labels differ between float32
and float64 sits on a rounding knife-edge and is rejected, so the goldens do not depend on GEMM order.

Usage: /opt/metricsvenv/bin/python tests/reference/kmeans_reference.py
"""
import json
import pathlib

import numpy as np
import sklearn
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.metrics import adjusted_rand_score, fowlkes_mallows_score, normalized_mutual_info_score
from threadpoolctl import threadpool_limits

OUT = pathlib.Path(__file__).resolve().parents[2] / "tasks" / "cluster" / "tests" / "fixtures"


def blobs(rng, n, dim, classes, spread, scale):
    centres = rng.uniform(-scale, scale, size=(classes, dim))
    labels = rng.randint(0, classes, size=n)
    x = centres[labels] + rng.normal(0.0, spread, size=(n, dim))
    return x.astype(np.float32), labels


def normalised(x):
    x = x.astype(np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def fit_lloyd(x, init, max_iter, tol):
    km = KMeans(n_clusters=init.shape[0], init=init, n_init=1, algorithm="lloyd",
                max_iter=max_iter, tol=tol).fit(x)
    return km


def lloyd_cases():
    rng = np.random.RandomState(20240601)
    cases = []

    x, _ = blobs(rng, 600, 8, 5, 0.6, 5.0)
    cases.append(("blobs", x, x[rng.choice(600, 5, replace=False)], 300, 1e-4))

    x, _ = blobs(rng, 900, 16, 6, 2.5, 2.0)
    init = x[rng.choice(900, 6, replace=False)]
    cases.append(("overlap", x, init, 300, 1e-4))
    cases.append(("overlap_tol", x, init, 300, 1e-2))
    cases.append(("overlap_max_iter", x, init, 2, 1e-4))

    x, _ = blobs(rng, 800, 32, 10, 1.0, 1.0)
    x = normalised(x)
    cases.append(("normalised", x, x[rng.choice(800, 10, replace=False)], 300, 1e-4))

    x, _ = blobs(rng, 300, 4, 3, 0.5, 3.0)
    init = np.concatenate([x[rng.choice(300, 3, replace=False)], np.full((1, 4), 50.0, np.float32)])
    cases.append(("empty_cluster", x, init.astype(np.float32), 300, 1e-4))

    out = []
    saved = set()
    for name, x, init, max_iter, tol in cases:
        data = name.split("_")[0] if name.startswith("overlap") else name
        km = fit_lloyd(x, init, max_iter, tol)
        km64 = fit_lloyd(x.astype(np.float64), init.astype(np.float64), max_iter, tol)
        if not np.array_equal(km.labels_, km64.labels_) or km.n_iter_ != km64.n_iter_:
            raise SystemExit(f"{name}: float32 and float64 fits differ; pick another case")
        if data not in saved:
            np.save(OUT / f"lloyd_{data}_x.npy", x)
            np.save(OUT / f"lloyd_{data}_init.npy", init)
            saved.add(data)
        out.append({
            "name": name,
            "x": f"lloyd_{data}_x.npy",
            "init": f"lloyd_{data}_init.npy",
            "max_iter": max_iter,
            "tol": tol,
            "labels": km64.labels_.tolist(),
            "centers": km64.cluster_centers_.tolist(),
            "inertia": float(km64.inertia_),
            "n_iter": int(km64.n_iter_),
        })
        print(f"lloyd {name}: n_iter {km64.n_iter_}, inertia {km64.inertia_:.6f}")
    return out


def plusplus_cases():
    rng = np.random.RandomState(7)
    sets = []
    x, y = blobs(rng, 1500, 16, 8, 0.5, 4.0)
    sets.append(("separated", x, y, 8))
    x, y = blobs(rng, 1500, 16, 8, 2.0, 1.5)
    sets.append(("overlapping", x, y, 8))
    x, y = blobs(rng, 1500, 32, 10, 1.2, 1.0)
    sets.append(("normalised", normalised(x), y, 10))

    out = []
    for name, x, y, k in sets:
        np.save(OUT / f"pp_{name}_x.npy", x)
        best = []
        for seed in range(5):
            km = KMeans(n_clusters=k, n_init=10, init="k-means++", algorithm="lloyd",
                        random_state=seed).fit(x)
            best.append(float(km.inertia_))
        km = KMeans(n_clusters=k, n_init=10, init="k-means++", algorithm="lloyd",
                    random_state=0).fit(x)
        xc = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
        init_pot, single = [], []
        for seed in range(200):
            centres, _ = kmeans_plusplus(xc, k, random_state=seed)
            d = ((xc[:, None, :] - centres[None, :, :]) ** 2).sum(-1).min(1)
            init_pot.append(float(d.sum()))
        for seed in range(100):
            single.append(float(KMeans(n_clusters=k, n_init=1, init="k-means++", algorithm="lloyd",
                                       random_state=seed).fit(x).inertia_))
        entry = {
            "name": name,
            "x": f"pp_{name}_x.npy",
            "truth": y.tolist(),
            "k": k,
            "best_of_10_inertia": best,
            "scores_seed0": {
                "nmi": normalized_mutual_info_score(y, km.labels_),
                "ari": adjusted_rand_score(y, km.labels_),
                "fmi": fowlkes_mallows_score(y, km.labels_),
            },
            "init_potential": {"mean": float(np.mean(init_pot)), "std": float(np.std(init_pot)),
                               "count": len(init_pot)},
            "single_run_inertia": {"mean": float(np.mean(single)), "std": float(np.std(single)),
                                   "min": float(np.min(single)), "count": len(single)},
        }
        print(f"k-means++ {name}: best-of-10 {best}, init {entry['init_potential']}, "
              f"single {entry['single_run_inertia']}, scores {entry['scores_seed0']}")
        out.append(entry)
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(limits=1):
        doc = {
            "generator": "tests/reference/kmeans_reference.py",
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
            "lloyd": lloyd_cases(),
            "plusplus": plusplus_cases(),
        }
    lloyd, pp = doc.pop("lloyd"), doc.pop("plusplus")
    (OUT / "lloyd.json").write_text(json.dumps({**doc, "cases": lloyd}) + "\n")
    (OUT / "plusplus.json").write_text(json.dumps({**doc, "cases": pp}) + "\n")


if __name__ == "__main__":
    main()
