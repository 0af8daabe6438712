#!/usr/bin/env python3
"""Goldens for `tasks/knn`: a numpy transcription of DINO's weighted k-NN classifier.

Source transcribed: facebookresearch/dino `eval_knn.py` (`knn_classifier` and the L2 normalisation in
`main`); iBOT's `evaluation/eval_knn.py` is the same code. Deliberate, documented deviations, all outside
DINO's working range or where DINO is nondeterministic:
  * the test set is cut into 100 chunks as DINO does, but the chunk step is at least 1 (DINO's `N // 100`
    is 0, a crash, for N < 100);
  * `torch.topk`/`torch.sort` order ties arbitrarily; here neighbours sort by (similarity desc, train index
    asc) and classes by (summed vote desc, class id asc) via stable argsorts;
  * only classes that received a vote count as predictions. DINO one-hot encodes over a hard-coded 1000
    classes, so when fewer than min(5, k) classes get votes its top-5 is padded with arbitrary zero-vote
    classes (for small datasets almost always ids that do not exist); that padding never counts here.
    DINO's own torch code agrees with this on every case below (checked when torch is installed);
  * `num_classes` is max label + 1 instead of 1000 (no effect on the result under the rule above).

Features are not stored: both this script and `knn::synthetic` generate them bit for bit from a
counter-based splitmix64 hash with single f32 operations. Each case is also run in float64; a case whose
counts differ between float32 and float64 sits on a rounding knife-edge and is rejected, so the goldens
do not depend on GEMM summation order. If torch is installed, DINO's original torch code is run as well
and must agree.

Usage: python tests/reference/knn_reference.py  (writes tasks/knn/tests/goldens/knn_cases.json)
"""
import json
import pathlib

import numpy as np

MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def hash64(seed, stream, index):
    index = np.asarray(index, dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = (np.uint64(seed) * np.uint64(0xD1B54A32D192ED03)) ^ (
            np.uint64(stream) * np.uint64(0x8CB92BA72F3D8DD7)
        )
        z = key + (index + np.uint64(1)) * GOLDEN_GAMMA
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniform(seed, stream, index):
    h = hash64(seed, stream, index)
    return ((h >> np.uint64(40)).astype(np.int64) - (1 << 23)).astype(np.float32) / np.float32(1 << 23)


def labels(seed, stream, n, classes, spacing):
    return (hash64(seed, stream, np.arange(n)) % np.uint64(classes)).astype(np.int64) * spacing


def clustered(seed, centers_stream, stream, class_index, dim, noise):
    n = len(class_index)
    d = np.arange(dim)
    center = uniform(seed, centers_stream, class_index[:, None] * dim + d[None, :])
    u = uniform(seed, stream, np.arange(n)[:, None] * dim + d[None, :])
    scale = np.float32(1.5) + uniform(seed, stream + 1, np.arange(n))
    return (center + np.float32(noise) * u) * scale[:, None]


def make_case(c):
    train_labels = labels(c["seed"], 3, c["train"], c["classes"], c["spacing"])
    test_labels = labels(c["seed"], 4, c["test"], c["classes"] + c["unseen_test_classes"], c["spacing"])
    train = clustered(c["seed"], 0, 1, train_labels // c["spacing"], c["dim"], c["noise"])
    test = clustered(c["seed"], 0, 5, test_labels // c["spacing"], c["dim"], c["noise"])
    return train, train_labels, test, test_labels


def normalize(x):
    """torch.nn.functional.normalize(x, dim=1, p=2)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, x.dtype.type(1e-12))


def knn_classifier(train_features, train_labels, test_features, test_labels, k, T, num_classes):
    """DINO's knn_classifier, line for line, in numpy. Returns (top1 count, top5 count, total)."""
    top1, top5, total = 0, 0, 0
    train_features = train_features.T
    num_test_images, num_chunks = test_labels.shape[0], 100
    imgs_per_chunk = max(1, num_test_images // num_chunks)
    dtype = train_features.dtype
    for idx in range(0, num_test_images, imgs_per_chunk):
        features = test_features[idx : min(idx + imgs_per_chunk, num_test_images), :]
        targets = test_labels[idx : min(idx + imgs_per_chunk, num_test_images)]
        batch_size = targets.shape[0]

        similarity = features @ train_features
        indices = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        distances = np.take_along_axis(similarity, indices, axis=1)
        retrieved_neighbors = train_labels[indices]

        retrieval_one_hot = np.zeros((batch_size * k, num_classes), dtype=dtype)
        retrieval_one_hot[np.arange(batch_size * k), retrieved_neighbors.reshape(-1)] = 1
        distances_transform = np.exp(distances / dtype.type(T))
        probs = np.sum(
            retrieval_one_hot.reshape(batch_size, -1, num_classes) * distances_transform.reshape(batch_size, -1, 1),
            axis=1,
        )
        predictions = np.argsort(-probs, axis=1, kind="stable")

        # Only classes that received a vote are predictions (see module docstring).
        voted = np.take_along_axis(probs, predictions, axis=1) > 0
        correct = (predictions == targets.reshape(-1, 1)) & voted
        top1 += int(correct[:, :1].sum())
        top5 += int(correct[:, : min(5, k)].sum())
        total += batch_size
    return top1, top5, total


def dino_knn_torch(train_features, train_labels, test_features, test_labels, k, T, num_classes=1000,
                   voted_only=False):
    """DINO's `knn_classifier` as released, on L2-normalised torch tensors. `voted_only` counts a
    prediction only when its class got a vote (our documented rule; with DINO's num_classes=1000 the
    vote-less fill-ins are ids that never occur, so the counts agree)."""
    import torch

    top1, top5, total = 0, 0, 0
    train_features = train_features.t()
    num_test_images, num_chunks = test_labels.shape[0], 100
    imgs_per_chunk = max(1, num_test_images // num_chunks)
    retrieval_one_hot = torch.zeros(k, num_classes)
    for idx in range(0, num_test_images, imgs_per_chunk):
        features = test_features[idx : min((idx + imgs_per_chunk), num_test_images), :]
        targets = test_labels[idx : min((idx + imgs_per_chunk), num_test_images)]
        batch_size = targets.shape[0]
        similarity = torch.mm(features, train_features)
        distances, indices = similarity.topk(k, largest=True, sorted=True)
        candidates = train_labels.view(1, -1).expand(batch_size, -1)
        retrieved_neighbors = torch.gather(candidates, 1, indices)
        retrieval_one_hot.resize_(batch_size * k, num_classes).zero_()
        retrieval_one_hot.scatter_(1, retrieved_neighbors.view(-1, 1), 1)
        distances_transform = distances.clone().div_(T).exp_()
        probs = torch.sum(
            torch.mul(retrieval_one_hot.view(batch_size, -1, num_classes), distances_transform.view(batch_size, -1, 1)),
            1,
        )
        scores, predictions = probs.sort(1, True)
        correct = predictions.eq(targets.view(-1, 1))
        if voted_only:
            correct = correct & (scores > 0)
        top1 += int(correct.narrow(1, 0, 1).sum().item())
        top5 += int(correct.narrow(1, 0, min(5, k)).sum().item())
        total += targets.size(0)
    return top1, top5, total


def dino_torch(train, train_labels, test, test_labels, k, T):
    """DINO's original torch code (num_classes=1000) on numpy inputs, to cross-check the transcription."""
    import torch

    normalize = lambda x: torch.nn.functional.normalize(torch.from_numpy(x), dim=1, p=2)  # noqa: E731
    with torch.no_grad():
        return dino_knn_torch(normalize(train), torch.from_numpy(train_labels), normalize(test),
                              torch.from_numpy(test_labels), k, T)


CASES = [
    dict(name="ten_classes", seed=1, dim=16, train=500, test=200, classes=10, spacing=1,
         unseen_test_classes=0, noise=1.5, ks=[1, 5, 10, 20, 100, 200], temperature=0.07),
    dict(name="three_classes_k_above_classes", seed=2, dim=8, train=300, test=120, classes=3, spacing=1,
         unseen_test_classes=0, noise=2.0, ks=[1, 2, 3, 5, 10, 20, 100, 300], temperature=0.07),
    dict(name="two_classes_small_test_t0.1", seed=3, dim=4, train=50, test=37, classes=2, spacing=1,
         unseen_test_classes=0, noise=3.0, ks=[1, 3, 7, 50], temperature=0.1),
    dict(name="sparse_ids_unseen_test_classes", seed=4, dim=12, train=400, test=150, classes=6, spacing=3,
         unseen_test_classes=2, noise=1.2, ks=[4, 10, 20, 200], temperature=0.07),
    dict(name="fifty_classes_dim64", seed=5, dim=64, train=1000, test=250, classes=50, spacing=1,
         unseen_test_classes=0, noise=2.5, ks=[10, 20, 100, 200], temperature=0.07),
]


def main():
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    out = []
    for c in CASES:
        train, train_labels, test, test_labels = make_case(c)
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
        expected = []
        for k in c["ks"]:
            r32 = knn_classifier(normalize(train), train_labels, normalize(test), test_labels, k,
                                 c["temperature"], num_classes)
            r64 = knn_classifier(normalize(train.astype(np.float64)), train_labels,
                                 normalize(test.astype(np.float64)), test_labels, k, c["temperature"], num_classes)
            assert r32 == r64, f"{c['name']} k={k}: float32 {r32} vs float64 {r64} (rounding knife-edge)"
            if have_torch:
                rt = dino_torch(train, train_labels, test, test_labels, k, c["temperature"])
                assert rt == r32, f"{c['name']} k={k}: DINO torch {rt} vs transcription {r32}"
            expected.append(dict(k=k, top1_correct=r32[0], top5_correct=r32[1], total=r32[2]))
            print(f"{c['name']:34s} k={k:4d} top1={r32[0]:4d} top5={r32[1]:4d} / {r32[2]}")
        out.append({**c, "expected": expected})
    path = pathlib.Path(__file__).resolve().parents[2] / "tasks/knn/tests/goldens/knn_cases.json"
    path.write_text(json.dumps({"generator": "tests/reference/knn_reference.py", "torch_checked": have_torch,
                                "cases": out}, indent=1) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
