"""Export: a trained checkpoint -> one ONNX file (dynamic batch) + a model card JSON beside it.

The ONNX graph takes what :func:`leukostage.imaging.preprocess` returns, batched: (N, S, S, 3) float32 in [0, 1], S
the architecture's input side (224 for EfficientNet-Lite0, 128 for the paper CNN). It returns ``probabilities``
(N, 4) and, for Grad-CAM without torch, ``features`` (N, C, H, W): the maps Grad-CAM explains, before their pooling
(lite0: the 1280-channel head convolution, 7x7; the paper CNN: the last block's convolutions, 256 x 16x16, before
its 2x2 max pool), and ``weights`` (N, 4, C), Grad-CAM's channel weights for every class: the spatial mean of
d logit_k / d features. Both poolings (max, global average) pass the gradient's sum over positions through unchanged
(:class:`model.Backbone`), so that mean is the pooled features' gradient summed over their positions, divided by the
maps' H x W. The head is piecewise linear (Linear layers, ReLU between), so that gradient is an exact closed form,
w_L[k] diag(relu'(z)) ... W_1, and summing it over positions only needs W_1 summed over the pooled positions (a
constant of the graph): a few thousand multiply-adds per image instead of the full gradient. Models with a domain
embedding (lite0) also return ``domain_score`` (N,), the k-NN distance of :mod:`leukostage.domain`.

The wrapper uses only the :class:`model.Backbone` members of a model, so a new backbone exports unchanged.
"""

from __future__ import annotations

import json
import platform
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..classes import CLASSES
from ..domain import DOMAIN_NEIGHBOURS, DOMAIN_OUTPUT, DomainBank, unit_rows
from ..imaging import BACKGROUND_LEVEL, BACKGROUND_QUANTILE, IMAGE_SIZE, to_unit_range
from ..predict import card_path_for, result_fields, session_options
from .evaluate import headline_metrics

OUTPUT_NAMES = ("probabilities", "features", "weights")
OPSET = 18


class ServingGraph(nn.Module):
    """Wraps a :class:`model.Backbone` for export: its ``forward_maps`` (or ``forward_domain``), ``head`` and
    ``feature_shape``, nothing else.

    Works for the paper CNN (flatten + MLP over max-pooled maps) and EfficientNet-Lite0 (global average + one Linear):
    in both, the spatial mean of the gradient at the maps is the pooled features' gradient summed over the pooled
    positions, divided by the maps' positions. With ``domain`` (the training embeddings' bank) it also outputs
    ``domain_score``, the k-NN distance of the model's domain embedding (``forward_domain``; see
    :mod:`leukostage.domain`); a :class:`leukostage.domain.DomainBank` gives ``domain.bank_distance`` instead.
    """

    def __init__(self, model: nn.Module, temperature: float = 1.0, domain: np.ndarray | DomainBank | None = None):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)  # softmax(logits / T): T fitted on validation data calibrates
        self.linears = [m for m in model.head if isinstance(m, nn.Linear)]
        # W1 summed over the pooled positions, (units, C): a constant of the graph, not work done per image
        channels, side, _ = model.feature_shape
        first = self.linears[0].weight.detach().reshape(-1, side * side, channels).sum(1)
        self.register_buffer("first_summed", first, persistent=False)
        if isinstance(domain, np.ndarray):
            domain = DomainBank((unit_rows(domain),), (min(DOMAIN_NEIGHBOURS, len(domain)),), (1.0,))
        self.domain = domain
        for i, rows in enumerate(domain.parts if domain is not None else ()):
            self.register_buffer(f"domain_bank{i or ''}", torch.as_tensor(unit_rows(rows)), persistent=False)

    def domain_distance(self, unit: torch.Tensor) -> torch.Tensor:
        """``domain.bank_distance`` in the graph (one part with scale 1: the plain k-NN distance)."""
        bank = self.domain
        similarities = [unit @ getattr(self, f"domain_bank{i or ''}").T for i in range(len(bank.parts))]
        own = []
        for similarity, k, scale in zip(similarities, bank.neighbours, bank.scales):
            distance = 1.0 - torch.topk(similarity, k, dim=1).values[:, -1]
            own.append(distance if scale == 1.0 else distance * scale)
        score = own[0] if len(own) == 1 else torch.stack(own).min(0).values
        if bank.pooled_scale is not None:
            k = min(DOMAIN_NEIGHBOURS, sum(len(rows) for rows in bank.parts))
            pooled = 1.0 - torch.topk(torch.cat(similarities, dim=1), k, dim=1).values[:, -1]
            score = torch.maximum(score, pooled * bank.pooled_scale)
        return score

    @property
    def has_domain(self) -> bool:
        return self.domain is not None

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUT_NAMES + ((DOMAIN_OUTPUT,) if self.has_domain else ())

    def forward(self, x: torch.Tensor):
        if self.has_domain:
            maps, feats, embedding = self.model.forward_domain(x.permute(0, 3, 1, 2))  # NHWC -> NCHW
        else:
            maps, feats = self.model.forward_maps(x.permute(0, 3, 1, 2))
        n, c, h, w = feats.shape
        act = feats.permute(0, 2, 3, 1).reshape(n, -1)  # channels-last flatten, as the head expects
        masks = []
        for lin in self.linears[:-1]:
            z = lin(act)
            masks.append((z > 0).to(z.dtype))
            act = torch.relu(z)
        logits = self.linears[-1](act)
        # d logit_k / d (input of layer i) = w_last[k] * m_L @ W_L ... * m_i @ W_i; with W_1 summed over the pooled
        # positions for the first layer, the product ends as d logit_k / d pooled, summed over positions (N, K, C)
        grad = self.linears[-1].weight.unsqueeze(0).expand(n, -1, -1)
        for i in reversed(range(len(self.linears) - 1)):
            grad = (grad * masks[i].unsqueeze(1)) @ (self.first_summed if i == 0 else self.linears[i].weight)
        if len(self.linears) == 1:  # a single Linear: its weight already is d logit / d pooled
            grad = grad.reshape(n, grad.shape[1], h * w, c).sum(2)
        weights = grad / (maps.shape[-2] * maps.shape[-1])  # mean over the maps' positions
        outputs = (torch.softmax(logits / self.temperature, dim=1), maps, weights)
        if self.has_domain:
            unit = embedding / torch.linalg.vector_norm(embedding, dim=1, keepdim=True).clamp_min(1e-12)
            outputs += (self.domain_distance(unit),)
        return outputs


def export_onnx(
    model: nn.Module,
    path: str | Path,
    image_size: int = IMAGE_SIZE,
    temperature: float = 1.0,
    domain: np.ndarray | DomainBank | None = None,
) -> Path:
    """Write a single-file ONNX model with a dynamic batch dimension (``domain``: the training embeddings (M, D), or a
    :class:`leukostage.domain.DomainBank`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ServingGraph(model.eval(), temperature, domain).eval()
    names = graph.output_names
    dummy = torch.rand(2, image_size, image_size, 3)
    with warnings.catch_warnings():  # torch's note that a strided Slice was not constant-folded: ORT folds it on load
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        _export(graph, dummy, path, names)
    return path


def _export(graph: nn.Module, dummy: torch.Tensor, path: Path, names: tuple[str, ...]) -> None:
    torch.onnx.export(
        graph,
        (dummy,),
        str(path),
        input_names=["image"],
        output_names=list(names),
        dynamic_axes={"image": {0: "batch"}, **{name: {0: "batch"} for name in names}},
        opset_version=OPSET,
        dynamo=False,
        # keep BatchNorm nodes and constants as they are (ONNX Runtime fuses and folds them when it loads the file):
        # the file's initializers then carry the module's own parameter names, so tests can rebuild the torch model
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
    )


def build_card(name: str, ckpt: dict, metrics: dict, command: str | None = None) -> dict:
    """The model card: everything serving needs (classes, input, preprocessing) and everything a reader needs."""
    meta = ckpt.get("meta", {})
    mc = ckpt["model_config"]
    return {
        "name": name,
        "version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "intended_use": "Research decision support only; not a diagnosis. Stage names are the seed paper's names "
        "for the Taleqani dataset's B-ALL subtypes (flow cytometry labels), not clinical stages.",
        "classes": [{"key": c.key, "display_name": c.display_name, "dataset_label": c.dataset_label} for c in CLASSES],
        "input": {
            "name": "image",
            "shape": ["batch", mc["image_size"], mc["image_size"], 3],
            "dtype": "float32",
            "layout": "NHWC",
            "color": "RGB",
        },
        "outputs": list(OUTPUT_NAMES),
        "preprocessing": {
            "resize": [mc["image_size"], mc["image_size"]],
            "interpolation": "area (shrink), linear (enlarge)",
            "scale": "1/255",
            "function": "leukostage.imaging.preprocess",
            "colour_normalisation": f"in the graph: each channel x {BACKGROUND_LEVEL} / its "
            f"{BACKGROUND_QUANTILE * 100:.0f}th percentile"
            if mc.get("colour_norm")
            else "none",
        },
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


def onnx_outputs(onnx_path: str | Path, batch: np.ndarray, chunk: int = 64) -> dict[str, np.ndarray]:
    """Every output of the exported file, in chunks (used by export and the parity checks)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), session_options(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    parts = [sess.run(names, {"image": batch[i : i + chunk].astype(np.float32)}) for i in range(0, len(batch), chunk)]
    return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(names)}


def onnx_probabilities(onnx_path: str | Path, batch: np.ndarray) -> np.ndarray:
    """Probabilities from the exported file (used by parity checks)."""
    return onnx_outputs(onnx_path, batch)["probabilities"]


# Temperature scaling may soften (T > 1) or sharpen (T < 1): label smoothing (the transfer recipe) deliberately keeps
# the logits small, so its model is under-confident by design (ECE 0.07 at T = 1). But a validation part the model
# gets (almost) all right puts the NLL optimum at T -> 0, every answer ~100 % sure; so T is also kept at or above the
# point where the mean validation confidence equals the validation accuracy, estimated with add-one smoothing
# ((correct + 1) / (n + 2): an error-free part of 390 images says 99.7 %, not 100 %).
TEMPERATURE_GRID = tuple(np.round(np.exp(np.linspace(np.log(0.25), np.log(8.0), 61)), 4))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_temperature(y_val: np.ndarray, logits_val: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the T minimising validation NLL of softmax(logits / T), but never so
    small that the mean validation confidence exceeds the (add-one smoothed) validation accuracy."""

    def nll(t: float) -> float:
        p = _softmax(logits_val / t)
        return float(-np.log(np.clip(p[np.arange(len(y_val)), y_val], 1e-12, None)).mean())

    accuracy = ((logits_val.argmax(1) == y_val).sum() + 1) / (len(y_val) + 2)
    floor = next(
        (t for t in TEMPERATURE_GRID if _softmax(logits_val / t).max(1).mean() <= accuracy), TEMPERATURE_GRID[-1]
    )
    return float(max(min(TEMPERATURE_GRID, key=nll), floor))


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


def embeddings(model: nn.Module, images_uint8: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The domain check's embedding (N, D) of uint8 images, from ``model.forward_domain``."""
    from .train import to_input

    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(images_uint8), batch_size):
            out.append(model.forward_domain(to_input(images_uint8[i : i + batch_size]))[2].numpy())
    return np.concatenate(out)


def val_test_outputs(onnx_path: str | Path, images: np.ndarray, split: dict, shifted=None) -> dict[str, np.ndarray]:
    """Every output of the exported file, exactly as it will be served, for the val part, the test part, then the
    val part's shifted views (``shifted``, :class:`leukostage.training.decision.ShiftedViews`; one session for all)."""
    parts = [images[np.concatenate([split["val"], split["test"]])]]
    if shifted is not None:
        parts.append(shifted.views)
    return onnx_outputs(onnx_path, to_unit_range(np.concatenate(parts)))


def fit_served_decision(
    outputs: dict[str, np.ndarray], labels: np.ndarray, split: dict, split_name: str, shifted=None
) -> tuple[dict, dict, dict | None]:
    """The decisions' thresholds, chosen on the val part and its shifted views (:mod:`leukostage.training.decision`),
    and the test part's metrics, from the served file's outputs (:func:`val_test_outputs`).

    The test part is scored once, after the thresholds are fixed. Returns (decision, test metrics with the served
    decisions, domain threshold and test share flagged, or None).
    """
    from .decision import TARGET_ACCURACY, choose_thresholds, served_summary
    from .evaluate import compute_metrics, decision_metrics

    n_val, n_test = len(split["val"]), len(split["test"])
    probs = outputs["probabilities"]
    scores = outputs.get(DOMAIN_OUTPUT)
    val = np.r_[np.arange(n_val), np.arange(n_val + n_test, len(probs))]  # clean val, then its shifted views
    y_val = np.r_[labels[split["val"]], shifted.labels if shifted is not None else []].astype(np.int64)
    chosen = choose_thresholds(probs[val], y_val, None if scores is None else scores[val])
    shifted_note = (
        f" and its {len(shifted.labels)} shifted views ({len(shifted.refused)} validation shifts, through the gate)"
        if shifted is not None
        else ""
    )
    decision = {
        "uncertain_below": chosen["uncertain_below"],
        "normal_below": chosen["normal_below"],
        "chosen_on": f"{split_name} split, val part{shifted_note}",
        "target_selective_accuracy": TARGET_ACCURACY,
    }
    if shifted is not None:
        decision["validation_shifts"] = {
            "refused_by_gate": shifted.refused,
            "served": served_summary(
                probs[n_val + n_test :], shifted.labels, None if scores is None else scores[n_val + n_test :], chosen
            ),
        }
    y_test = labels[split["test"]]
    test_probs = probs[n_val : n_val + n_test]
    test_metrics = headline_metrics(compute_metrics(y_test, test_probs))
    if scores is None:
        return decision, test_metrics, None
    threshold = chosen["domain_threshold"]
    test_scores = scores[n_val : n_val + n_test]
    served = [
        result_fields(p, decision["uncertain_below"], float(sc), threshold, decision["normal_below"])
        for p, sc in zip(test_probs, test_scores)
    ]
    test_metrics["decision"] = decision_metrics(y_test, served)
    domain = {
        "threshold": round(threshold, 4),
        "test_flagged": round(float((test_scores > threshold).mean()), 4),
        "threshold_chosen_on": f"{split_name} split, val part{shifted_note}: the largest score whose answered "
        f"images stay at {TARGET_ACCURACY} accuracy with no leukaemia called Normal, at most their 99th percentile",
    }
    return decision, test_metrics, domain


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
            raise ValueError(
                f"{f} was scored on data {other.get('data_fingerprint')}, not this model's training data "
                f"({fingerprint}); re-run `leukostage evaluate` on the same data folder"
            )
        out[f"{other['split']}_{other['part']}"] = {
            **headline_metrics(doc["metrics"]),
            **({"decision": doc["metrics"]["decision"]} if "decision" in doc["metrics"] else {}),
            **{k: other[k] for k in ("model", "seed", "data_fingerprint")},
        }
    return out


EXTERNAL_FIELDS = (
    "n",
    "labels",
    "uncertain",
    "refused",
    "leukaemia_labelled",
    "leukaemia_confident",
    "outside_domain_share",
)


def external_summaries(files: list[str | Path]) -> dict:
    """What ``evaluate --external`` reports measured (other laboratories' normal blood), per folder, for the card."""
    out: dict = {}
    for f in files:
        doc = json.loads(Path(f).read_text())
        if "folders" not in doc:
            raise ValueError(f"{f} is not an `evaluate --external` report (it has no 'folders')")
        for folder, summary in doc["folders"].items():
            out[folder] = {k: summary[k] for k in EXTERNAL_FIELDS if k in summary} | {"scored": doc["model"]}
    return out


def export_served(
    model: nn.Module, meta: dict, images: np.ndarray, labels: np.ndarray, split: dict, out: str | Path, size: int
) -> tuple[Path, dict, np.ndarray | None]:
    """The served graph of a trained model, from its own split (``images``/``labels``: the whole dataset): the
    softmax temperature fitted on the val part, and the domain check's bank of the train part's embeddings, with
    one capture-chain copy of each image for a capture recipe (the domain also covers what training answered).
    Returns the file, the card's calibration entry and the bank (None: an architecture without a domain embedding).
    """
    from .train import RECIPES, augmented_copies, to_input

    x_val, y_val = images[split["val"]], labels[split["val"]]
    with torch.no_grad():
        logits_val = torch.cat([model(to_input(x_val[i : i + 64])) for i in range(0, len(x_val), 64)]).numpy()
    temperature = fit_temperature(y_val, logits_val)
    calibration = {
        "temperature": temperature,
        "fitted_on": f"{meta['split']} split, val part (NLL, floored at the add-one val accuracy)",
        "grid": [min(TEMPERATURE_GRID), max(TEMPERATURE_GRID)],
    }
    domain = None
    recipe = RECIPES.get(meta.get("recipe"))
    train_images = images[split["train"]]
    if recipe is not None and recipe.capture is not None:
        train_images = np.concatenate([train_images, augmented_copies(train_images, recipe, meta["seed"])])
    if model.DOMAIN_EMBEDDING is not None:  # architectures with a domain embedding (lite0)
        domain = unit_rows(embeddings(model, train_images))
    return export_onnx(model, out, size, temperature=temperature, domain=domain), calibration, domain


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    name: str | None = None,
    metrics_files: list[str] | None = None,
    data: str | Path | None = None,
    external_files: list[str] | None = None,
) -> dict:
    """Checkpoint -> ONNX + card.

    With the training data, the model's own split is rebuilt: the train part (and a capture-chain copy of each, for
    the capture recipe) is the domain check's bank of embeddings, the val part and its shifted views fit the softmax
    temperature and the decision's thresholds (:mod:`leukostage.training.decision`), the test part gives the card's
    metrics (never used for choosing anything). ``metrics_files`` (reports of other runs, e.g. the blocked split) are
    copied into the card with their provenance.

    Raises:
        ValueError: ``data`` or a ``metrics_files`` report is not the data the model was trained on (fingerprint
            mismatch).
    """
    from .data import reproduce_split
    from .decision import shifted_views
    from .train import RECIPES, load_checkpoint

    model, ckpt = load_checkpoint(checkpoint)
    size = ckpt["model_config"]["image_size"]
    meta = ckpt["meta"]
    copied = copied_metrics(metrics_files or [], meta["fingerprint"])  # refused before any work is done
    metrics: dict = {}
    decision = {"uncertain_below": 0.5, "chosen_on": "default (no data given)"}
    calibration = {"temperature": 1.0, "fitted_on": "not fitted (no data given)"}
    domain_card = None
    if data is None:
        out = export_onnx(model, out, size)
    else:
        ds, split, images = reproduce_split(data, meta["fingerprint"], meta["split"], meta["seed"], size)
        x_val, y_val = images[split["val"]], ds.labels[split["val"]]
        out, calibration, domain = export_served(model, meta, images, ds.labels, split, out, size)
        recipe = RECIPES.get(meta.get("recipe"))
        shifted = shifted_views(x_val, y_val) if recipe is not None and recipe.capture is not None else None
        decision, metrics[f"{meta['split']}_test"], served_domain = fit_served_decision(
            val_test_outputs(out, images, split, shifted), ds.labels, split, meta["split"], shifted
        )
        if domain is not None:
            domain_card = {
                "output": DOMAIN_OUTPUT,
                "threshold": served_domain["threshold"],
                "method": f"cosine distance of the domain embedding to its {DOMAIN_NEIGHBOURS}th nearest training "
                "embedding (deep k-NN, Sun et al. 2022)",
                "embedding": model.DOMAIN_EMBEDDING,
                "neighbours": DOMAIN_NEIGHBOURS,
                "fitted_on": f"{meta['split']} split, train part ({len(split['train'])} images"
                + (", and one capture-chain copy of each)" if len(domain) > len(split["train"]) else ")"),
                "threshold_chosen_on": served_domain["threshold_chosen_on"],
                "embedding_dims": int(domain.shape[1]),
                "test_flagged": served_domain["test_flagged"],
            }
    metrics.update(copied)
    card = build_card(name or Path(out).stem, ckpt, metrics)
    card["outputs"] = list(OUTPUT_NAMES) + ([DOMAIN_OUTPUT] if domain_card else [])
    card["decision"] = decision
    card["calibration"] = calibration
    if domain_card:
        card["domain"] = domain_card
    card["limits"] = MODEL_LIMITS
    if external_files:
        card["external"] = external_summaries(external_files)
    write_card(card, out)
    return card


# What every card says about where the model may be trusted: the training data's reach, not a measured number
MODEL_LIMITS = [
    "Trained on one hospital's images (Taleqani Hospital, Tehran): one stain, one microscope and camera, one "
    "magnification (100x fields, 224x224 crops).",
    "Knows four classes only, the dataset's B-ALL subtypes by flow cytometry (benign hematogones, Early Pre-B, "
    "Pre-B, Pro-B ALL): no T-ALL, AML, CLL, CML or other leukaemias, and no normal blood cells other than those "
    "in the Benign class.",
    "Images from other laboratories are flagged 'outside the training domain' rather than classified; it must be "
    "retrained or calibrated on a laboratory's own images before its classes mean anything there.",
    "Research decision support, not a diagnosis; the stage names are the seed paper's, not clinical stages.",
]
