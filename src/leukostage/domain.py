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

An adapted model's bank comes in parts, one per source (the base's training images, the laboratory's fields): a
:class:`DomainBank`, scored by :func:`bank_distance`. A field must be as near to one source as that source's own
validation fields are (each part with its own ``k``, in proportion to its size, as Sun et al. scale ``k`` with a
sub-sampled bank, and a scale that brings its validation fields' cover quantile to the first part's), and near the
whole bank as well (the k-NN distance to every part together, scaled the same way). The first alone would let a few
laboratory fields with few neighbours set a loose region; one pooled bank alone lets the threshold follow the loosest
source, which widened the check around the training hospital's images too: in both cases other laboratories' normal
cells were let through.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class DomainBank:
    """The domain check's bank in parts, one per source, each unit rows (M_i, D) with its ``k`` and scale; with
    ``pooled_scale`` the scaled k-NN distance to all the parts together must pass as well."""

    parts: tuple[np.ndarray, ...]
    neighbours: tuple[int, ...]
    scales: tuple[float, ...]
    pooled_scale: float | None = None


def part_neighbours(sizes: list[int], k: int = DOMAIN_NEIGHBOURS) -> tuple[int, ...]:
    """``k`` for each part: ``k`` for the first, in proportion to its size for the others (at least 1, at most k and
    at most the part's rows)."""
    return tuple(max(1, min(k, n, round(k * n / sizes[0]))) for n in sizes)


def bank_distance(embeddings: np.ndarray, bank: DomainBank) -> np.ndarray:
    """Distances (N,): the smallest over the parts of scale times the k-NN distance to that part, or, with a pooled
    scale, the larger of that and the scaled k-NN distance to every part together."""
    own = np.min(
        [s * knn_distance(embeddings, rows, k) for rows, k, s in zip(bank.parts, bank.neighbours, bank.scales)], axis=0
    )
    if bank.pooled_scale is None:
        return own
    return np.maximum(own, bank.pooled_scale * knn_distance(embeddings, np.concatenate(bank.parts)))


def domain_fields(score: float, threshold: float) -> dict:
    """The ``domain`` part of the public JSON contract."""
    return {
        "score": round(float(score), 4),
        "threshold": round(float(threshold), 4),
        "in_domain": bool(score <= threshold),
    }
