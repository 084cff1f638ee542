"""Export: a trained checkpoint -> one ONNX file (dynamic batch) + a model card JSON beside it.

The ONNX graph takes what :func:`leukostage.imaging.preprocess` returns, batched: (N, 128, 128, 3) float32 in [0, 1].
It returns ``probabilities`` (N, 4), and for Grad-CAM without torch: ``features`` (N, C, 16, 16), the last
convolutional layer's activations (before its 2x2 max pool), and ``weights`` (N, 4, C), Grad-CAM's channel weights
for every class: the spatial mean of d logit_k / d features. Max pooling hands each gradient of the pooled features
to one position of ``features``, so that mean is the pooled gradient's sum over positions divided by 16x16. The
dense head is piecewise linear (ReLU), so the gradient is an exact closed form,
w3[k] diag(relu'(z2)) W2 diag(relu'(z1)) W1, and summing it over positions only needs W1 summed over positions
(a C x 256 constant): a few thousand multiply-adds per image instead of the full (4, C, 8, 8) gradient.
"""
from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .classes import CLASSES
from .evaluate import headline_metrics
from .imaging import BACKGROUND_LEVEL, BACKGROUND_QUANTILE, IMAGE_SIZE
from .predict import card_path_for

OUTPUT_NAMES = ("probabilities", "features", "weights")
OPSET = 18


class ServingGraph(nn.Module):
    """Wraps a PaperCNN-like model (``forward_features`` + an MLP ``head``) for export."""

    def __init__(self, model: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)  # softmax(logits / T): T fitted on validation data calibrates
        self.linears = [m for m in model.head if isinstance(m, nn.Linear)]
        # W1 summed over the pooled positions, (units, C): a constant of the graph, not work done per image
        channels, side, _ = model.feature_shape
        first = self.linears[0].weight.detach().reshape(-1, side * side, channels).sum(1)
        self.register_buffer("first_summed", first, persistent=False)

    def forward(self, x: torch.Tensor):
        maps, feats = self.model.forward_maps(x.permute(0, 3, 1, 2))  # NHWC -> NCHW
        n, c, h, w = feats.shape
        act = feats.permute(0, 2, 3, 1).reshape(n, -1)  # channels-last flatten, as the head expects
        masks = []
        for lin in self.linears[:-1]:
            z = lin(act)
            masks.append((z > 0).to(z.dtype))
            act = torch.relu(z)
        logits = self.linears[-1](act)
        # d logit_k / d (first hidden layer's input) = w_last[k] * m_L @ W_L ... * m_1  -> (N, K, units of layer 1)
        grad = self.linears[-1].weight.unsqueeze(0).expand(n, -1, -1)
        for lin, mask in zip(reversed(self.linears[1:-1]), reversed(masks[1:])):
            grad = (grad * mask.unsqueeze(1)) @ lin.weight
        grad = grad * masks[0].unsqueeze(1)
        # ... @ W1 gives d logit_k / d flat (h, w, C); summed over (h, w) that is grad @ W1 summed over positions
        weights = (grad @ self.first_summed) / (maps.shape[-2] * maps.shape[-1])  # mean over the maps' positions
        return torch.softmax(logits / self.temperature, dim=1), maps, weights


def export_onnx(model: nn.Module, path: str | Path, image_size: int = IMAGE_SIZE, temperature: float = 1.0) -> Path:
    """Write a single-file ONNX model with a dynamic batch dimension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ServingGraph(model.eval(), temperature).eval()
    dummy = torch.rand(2, image_size, image_size, 3)
    torch.onnx.export(
        graph,
        (dummy,),
        str(path),
        input_names=["image"],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={"image": {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}},
        opset_version=OPSET,
        dynamo=False,
    )
    return path


def build_card(name: str, ckpt: dict, metrics: dict, command: str | None = None) -> dict:
    """The model card: everything serving needs (classes, input, preprocessing) and everything a reader needs."""
    meta = ckpt.get("meta", {})
    mc = ckpt["model_config"]
    return {
        "name": name,
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "intended_use": "Research decision support only; not a diagnosis. Stage names are the seed paper's names "
        "for the Taleqani dataset's B-ALL subtypes (flow cytometry labels), not clinical stages.",
        "classes": [
            {"key": c.key, "display_name": c.display_name, "dataset_label": c.dataset_label} for c in CLASSES
        ],
        "input": {"name": "image", "shape": ["batch", mc["image_size"], mc["image_size"], 3], "dtype": "float32",
                  "layout": "NHWC", "color": "RGB"},
        "outputs": list(OUTPUT_NAMES),
        "preprocessing": {"resize": [mc["image_size"], mc["image_size"]], "interpolation": "area (shrink), linear "
                          "(enlarge)", "scale": "1/255", "function": "leukostage.imaging.preprocess",
                          "colour_normalisation": f"in the graph: each channel x {BACKGROUND_LEVEL} / its "
                          f"{BACKGROUND_QUANTILE * 100:.0f}th percentile" if mc.get("colour_norm") else "none"},
        "architecture": mc,
        "training": {
            "data": "Taleqani ALL image dataset (CC BY 4.0), original/ images",
            "data_fingerprint": meta.get("fingerprint"),
            "split": meta.get("split"),
            "seed": meta.get("seed"),
            "split_counts": meta.get("split_counts"),
            "best_epoch": ckpt.get("epoch"),
            "recipe": meta.get("recipe_config"),
            "config": ckpt.get("train_config"),
            "precision": meta.get("precision"),
            "command": meta.get("command"),
        },
        "metrics": metrics,
        "versions": {"leukostage": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "export_command": command or " ".join(sys.argv),
    }


def write_card(card: dict, onnx_path: str | Path) -> Path:
    card_path = card_path_for(onnx_path)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card_path


def onnx_probabilities(onnx_path: str | Path, batch: np.ndarray) -> np.ndarray:
    """Probabilities from the exported file (used by parity checks)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.run(["probabilities"], {"image": batch.astype(np.float32)})[0]


# T >= 1 only: softening is allowed, sharpening is not. On a validation part the model gets ~99.7 % right, the NLL
# optimum is T << 1, which makes every answer ~100 % sure, also on images from other laboratories.
TEMPERATURE_GRID = tuple(np.round(np.exp(np.linspace(0.0, np.log(8.0), 41)), 4))


def fit_temperature(y_val: np.ndarray, logits_val: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the T >= 1 minimising validation NLL of softmax(logits / T)."""

    def nll(t: float) -> float:
        z = logits_val / t
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return float(-logp[np.arange(len(y_val)), y_val].mean())

    return float(min(TEMPERATURE_GRID, key=nll))


UNCERTAIN_TARGET_ACCURACY = 0.99  # selective accuracy the uncertainty threshold aims for, on validation data
UNCERTAIN_GRID = tuple(np.round(np.arange(0.40, 0.96, 0.05), 2))


def choose_uncertain_threshold(y_val: np.ndarray, probs_val: np.ndarray) -> float:
    """Smallest top-probability threshold whose accepted validation predictions reach the target accuracy."""
    conf, correct = probs_val.max(1), probs_val.argmax(1) == y_val
    for t in UNCERTAIN_GRID:
        kept = conf >= t
        if kept.any() and correct[kept].mean() >= UNCERTAIN_TARGET_ACCURACY:
            return float(t)
    return float(UNCERTAIN_GRID[-1])


def copied_metrics(files: list[str | Path], fingerprint: str) -> dict:
    """Headline metrics of other reports (e.g. the blocked-split run) for the card, keyed ``<split>_<part>``.

    Raises:
        ValueError: a report was scored on other data than the model's training data.
    """
    out: dict = {}
    for f in files:
        doc = json.loads(Path(f).read_text())
        other = doc["meta"]
        if other.get("data_fingerprint") != fingerprint:  # a report on other data cannot describe this model
            raise ValueError(f"{f} was scored on data {other.get('data_fingerprint')}, not this model's training data "
                             f"({fingerprint}); re-run `leukostage evaluate` on the same data folder")
        out[f"{other['split']}_{other['part']}"] = {
            **headline_metrics(doc["metrics"]),
            **{k: other[k] for k in ("model", "seed", "data_fingerprint")},
        }
    return out


def export_model(checkpoint: str | Path, out: str | Path, name: str | None = None,
                 metrics_files: list[str] | None = None, data: str | Path | None = None) -> dict:
    """Checkpoint -> ONNX + card.

    With the training data, the model's own split is rebuilt: the val part fits the softmax temperature and the
    uncertainty threshold, the test part gives the card's metrics (never used for choosing anything).
    ``metrics_files`` (reports of other runs, e.g. the blocked split) are copied into the card with their provenance.

    Raises:
        ValueError: ``data`` or a ``metrics_files`` report is not the data the model was trained on (fingerprint
            mismatch).
    """
    from .data import discover, load_arrays, make_split
    from .evaluate import compute_metrics
    from .train import load_checkpoint, to_input

    model, ckpt = load_checkpoint(checkpoint)
    size = ckpt["model_config"]["image_size"]
    meta = ckpt["meta"]
    copied = copied_metrics(metrics_files or [], meta["fingerprint"])  # refused before any work is done
    metrics: dict = {}
    decision = {"uncertain_below": 0.5, "chosen_on": "default (no data given)"}
    calibration = {"temperature": 1.0, "fitted_on": "not fitted (no data given)"}
    if data is None:
        out = export_onnx(model, out, size)
    else:
        ds = discover(data)
        if ds.fingerprint != meta["fingerprint"]:
            raise ValueError(f"data fingerprint {ds.fingerprint} is not the model's training data ({meta['fingerprint']})")
        split = make_split(ds, meta["split"], meta["seed"])
        images = load_arrays(ds, progress=False)
        x_val, y_val = images[split["val"]], ds.labels[split["val"]]
        with torch.no_grad():
            logits_val = torch.cat([model(to_input(x_val[i : i + 128])) for i in range(0, len(x_val), 128)]).numpy()
        temperature = fit_temperature(y_val, logits_val)
        calibration = {"temperature": temperature, "fitted_on": f"{meta['split']} split, val part (NLL)"}
        out = export_onnx(model, out, size, temperature=temperature)
        # one ONNX Runtime session scores both parts: the exported file, exactly as it will be served
        probs = onnx_probabilities(out, images[np.concatenate([split["val"], split["test"]])].astype(np.float32) / 255.0)
        val_probs, test_probs = probs[: len(split["val"])], probs[len(split["val"]) :]
        decision = {"uncertain_below": choose_uncertain_threshold(y_val, val_probs),
                    "chosen_on": f"{meta['split']} split, val part",
                    "target_selective_accuracy": UNCERTAIN_TARGET_ACCURACY}
        metrics[f"{meta['split']}_test"] = headline_metrics(compute_metrics(ds.labels[split["test"]], test_probs))
    metrics.update(copied)
    card = build_card(name or Path(out).stem, ckpt, metrics)
    card["decision"] = decision
    card["calibration"] = calibration
    write_card(card, out)
    return card
