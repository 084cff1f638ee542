"""The domain check: is an image like the ones the model was trained on? (serving path: numpy only)

The input validator asks "is this a blood smear?"; this asks the second question. A smear from another laboratory,
stain or magnification passes the validator but lies far from every training image in the network's own feature
space, and there the class probabilities mean little. The score is the cosine distance of an embedding (mid-level
stage outputs, globally averaged) to its k-th nearest neighbour among the training part's embeddings, clean and
through the capture chain (deep k-NN, Sun et al., ICML 2022, with their CIFAR-10 ``k``). A Gaussian (Mahalanobis)
score was used before the capture recipe: once training covers stain, focus, exposure and magnification, the
embeddings of what the model answers no longer form one ellipsoid, and the whitened distance, which weighs the
quietest directions most, is moved more by int8 rounding than by another laboratory. The exported graph computes the
score as an output; ``knn_distance`` is the same computation in numpy, used to fit the threshold and check the graph.

An adapted model's bank comes in parts, one per source (the base's training images, the laboratory's fields), and its
score is :func:`parted_knn_distance`: each part's distance is scaled so that its own validation fields' cover quantile
is the same, then the smallest is taken. One pooled bank would let the threshold follow the loosest source: a
laboratory whose fields lie farther apart than the training hospital's would widen the check around the training
hospital's images too, and there another laboratory's normal cells were let through.
"""

from __future__ import annotations

import numpy as np

DOMAIN_OUTPUT = "domain_score"  # the ONNX output that carries the score, (N,)
DOMAIN_NEIGHBOURS = 50  # k of the k-NN distance (Sun et al. 2022's value for CIFAR-10; not tuned here)


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32): the bank the graph holds, and the query side of the distance."""
    x = np.asarray(embeddings, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_distance(embeddings: np.ndarray, bank: np.ndarray, k: int = DOMAIN_NEIGHBOURS) -> np.ndarray:
    """Distances (N,): one minus the cosine similarity of each embedding (N, D) to its ``k``-th most similar row of
    ``bank`` (M, D), unit rows (:func:`unit_rows`)."""
    similarity = unit_rows(embeddings) @ np.asarray(bank, np.float32).T
    k = min(k, similarity.shape[1])
    return 1.0 - np.partition(similarity, -k, axis=1)[:, -k]


def parted_knn_distance(
    embeddings: np.ndarray, parts: list[tuple[np.ndarray, float]], k: int = DOMAIN_NEIGHBOURS
) -> np.ndarray:
    """Distances (N,): the smallest over ``parts`` ((bank, scale) pairs, unit rows) of scale times the k-NN distance
    to that part's bank; one part with scale 1 is :func:`knn_distance`."""
    return np.min([scale * knn_distance(embeddings, bank, k) for bank, scale in parts], axis=0)


def domain_fields(score: float, threshold: float) -> dict:
    """The ``domain`` part of the public JSON contract."""
    return {
        "score": round(float(score), 4),
        "threshold": round(float(threshold), 4),
        "in_domain": bool(score <= threshold),
    }
