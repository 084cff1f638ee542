"""The domain check: is an image like the ones the model was trained on? (serving path: numpy only)

The input validator asks "is this a blood smear?"; this asks the second question. A smear from another laboratory,
stain or magnification passes the validator but lies far from every training image in the network's own feature
space, and there the class probabilities mean little. The score is the Mahalanobis distance of an embedding
(mid-level stage outputs, globally averaged: they carry magnification, focus and stain texture) from the training
part's mean, under the training part's covariance shrunk towards a scaled identity (see
``leukostage.training.export.fit_domain``). The exported graph computes it as an output;
``mahalanobis`` is the same computation in numpy, used to fit the threshold and to check the graph.
"""

from __future__ import annotations

import numpy as np

DOMAIN_OUTPUT = "domain_score"  # the ONNX output that carries the score, (N,)


def mahalanobis(embeddings: np.ndarray, mean: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """Distances (N,) of embeddings (N, D) from ``mean`` (D,): the length of ``(x - mean) @ whitening``.

    ``whitening`` (D, D) is a square root of the inverse covariance (W W^T = precision). A sum of squares has no
    cancellation, so the float32 graph agrees with this float64 reference where x^T P x would not.
    """
    centred = np.asarray(embeddings, np.float64) - mean
    return np.sqrt(np.square(centred @ whitening).sum(1))


def domain_fields(score: float, threshold: float) -> dict:
    """The ``domain`` part of the public JSON contract."""
    return {
        "score": round(float(score), 4),
        "threshold": round(float(threshold), 4),
        "in_domain": bool(score <= threshold),
    }
