"""Metrics and reports: what a reader needs to judge a model, written as metrics.json + report.md + PNGs.

A checkpoint or an exported model is scored on a part of its own split (an exported one as it serves: its decisions,
uncertain outcomes included, counted by :mod:`leukostage.outcomes`); ``score_external`` runs the whole serving
pipeline on other laboratories' images, which have no labels, and reports what the model said there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..classes import CLASS_KEYS, CLASSES, LEUKAEMIA_KEYS, NORMAL_KEY
from ..outcomes import REASON_LOW_CONFIDENCE, REASON_OUTSIDE, tally

ECE_BINS = 15
CONFIDENT = 0.9  # a leukaemia label given above this probability on normal blood is the error that misleads most


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the gap between confidence and accuracy, weighted over equal-width confidence bins."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def compute_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, per-class report, macro-F1, one-vs-rest ROC-AUC, ECE and the confusion matrix."""
    from sklearn.metrics import classification_report, confusion_matrix, f1_score, roc_auc_score

    y_true = np.asarray(y_true)
    y_pred = probs.argmax(1)
    labels = list(range(len(CLASSES)))
    report = classification_report(
        y_true, y_pred, labels=labels, target_names=list(CLASS_KEYS), output_dict=True, zero_division=0
    )
    try:
        auc = float(roc_auc_score(y_true, probs, multi_class="ovr", labels=labels))
    except ValueError:  # a class absent from y_true (tiny subsets)
        auc = float("nan")
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "roc_auc_ovr": auc,
        "ece": expected_calibration_error(y_true, probs),
        "per_class": {k: {m: float(v) for m, v in report[k].items()} for k in CLASS_KEYS},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


HEADLINE = ("n", "accuracy", "macro_f1", "roc_auc_ovr", "ece")


def headline_metrics(metrics: dict, keys: tuple[str, ...] = HEADLINE) -> dict:
    """The few numbers a card or an audit table carries: the chosen scalars plus recall per class."""
    return {**{k: metrics[k] for k in keys}, "recall": {k: v["recall"] for k, v in metrics["per_class"].items()}}


def plot_confusion(matrix: list[list[int]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.imshow(cm, cmap="Blues")
    names = [c.display_name for c in CLASSES]
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black"
            )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def metrics_markdown(metrics: dict) -> str:
    """A classification-report table plus the headline numbers."""
    lines = [
        f"- images: {metrics['n']}",
        f"- accuracy: {metrics['accuracy']:.4f}",
        f"- macro-F1: {metrics['macro_f1']:.4f}",
        f"- ROC-AUC (one-vs-rest, macro): {metrics['roc_auc_ovr']:.4f}",
        f"- expected calibration error ({ECE_BINS} bins): {metrics['ece']:.4f}",
        "",
        "| class (dataset label) | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for c in CLASSES:
        m = metrics["per_class"][c.key]
        lines.append(
            f"| {c.display_name} ({c.dataset_label}) | {m['precision']:.4f} | {m['recall']:.4f} "
            f"| {m['f1-score']:.4f} | {int(m['support'])} |"
        )
    lines += ["", "Confusion matrix (rows true, columns predicted, order " + ", ".join(CLASS_KEYS) + "):", ""]
    lines += ["    " + " ".join(f"{v:5d}" for v in row) for row in metrics["confusion_matrix"]]
    if "decision" in metrics:  # an exported model: what it actually answers, uncertain outcomes included
        d = metrics["decision"]
        lines += [
            "",
            "As served (the card's uncertainty threshold and domain check):",
            "",
            f"- given a class: {d['decided']} of {d['n']} (coverage {d['coverage']:.4f})",
            f"- accuracy among images given a class: {d['selective_accuracy']:.4f}",
            f"- accuracy with uncertain counted as a miss: {d['accuracy_uncertain_as_miss']:.4f}",
            f"- uncertain, outside the training domain: {d['uncertain'][REASON_OUTSIDE]}; low confidence: "
            f"{d['uncertain'][REASON_LOW_CONFIDENCE]}",
            f"- leukaemia called Normal: {d['leukaemia_called_normal']}",
        ]
    return "\n".join(lines)


def write_report(out_dir: str | Path, metrics: dict, meta: dict, title: str) -> Path:
    """Write metrics.json (metrics + provenance), report.md and confusion_matrix.png into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"meta": meta, "metrics": metrics}, indent=2) + "\n")
    (out / "confusion_matrix.json").write_text(json.dumps(metrics["confusion_matrix"]) + "\n")
    plot_confusion(metrics["confusion_matrix"], out / "confusion_matrix.png", title)
    provenance = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    (out / "report.md").write_text(
        f"# {title}\n\n{provenance}\n\n{metrics_markdown(metrics)}\n\n![confusion matrix](confusion_matrix.png)\n"
    )
    return out


# --- scoring a model file on a split ---------------------------------------------------------------------------------
def model_provenance(model_path: str | Path) -> dict:
    """Split, seed and data fingerprint a model was trained with, from a checkpoint or an ONNX model card."""
    path = Path(model_path)
    if path.suffix == ".pt":
        import torch

        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        meta = ckpt["meta"]
        return {
            "split": meta["split"],
            "seed": meta["seed"],
            "fingerprint": meta["fingerprint"],
            "image_size": int(ckpt["model_config"]["image_size"]),
        }
    from ..predict import card_path_for

    card = json.loads(card_path_for(path).read_text())
    training = card["training"]
    return {
        "split": training["split"],
        "seed": training["seed"],
        "fingerprint": training["data_fingerprint"],
        "image_size": int(card["input"]["shape"][1]),
    }


def model_probabilities(model_path: str | Path, images_uint8: np.ndarray) -> np.ndarray:
    """Probabilities from a checkpoint (torch, fp32) or an ONNX file (ONNX Runtime) for cached uint8 images."""
    path = Path(model_path)
    if path.suffix == ".pt":
        from .train import load_checkpoint, predict_proba

        model, _ = load_checkpoint(path)
        return predict_proba(model, images_uint8)
    return model_decisions(path, images_uint8)[0]


def model_decisions(model_path: str | Path, images_uint8: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """An ONNX model's probabilities (N, 4), unrounded, and its serving decisions (label, uncertain reason, domain)
    for cached images: one inference for both."""
    from ..imaging import to_unit_range
    from ..predict import Predictor

    predictor = Predictor.load(model_path)
    probs: list[np.ndarray] = []
    decisions: list[dict] = []
    for i in range(0, len(images_uint8), 64):
        outputs = predictor.run_decision(to_unit_range(images_uint8[i : i + 64]))
        probs.append(outputs["probabilities"])
        decisions += predictor.decide_batch(outputs)
    return (np.concatenate(probs) if probs else np.zeros((0, len(CLASS_KEYS)), np.float32)), decisions


def decision_metrics(y_true: np.ndarray, decisions: list[dict]) -> dict:
    """What the served decision does on labelled images: coverage, accuracy among images given a class, accuracy
    with "uncertain" counted as a miss, uncertain by reason, and the dangerous error (leukaemia called Normal)."""
    labels = [d["label"] for d in decisions]
    truth = [CLASS_KEYS[int(y)] for y in y_true]
    decided = [(t, lab) for t, lab in zip(truth, labels) if lab in CLASS_KEYS]
    n = len(labels)
    reasons = tally({"valid": True, **d} for d in decisions).uncertain  # decisions: prediction fields, all valid
    return {
        "n": n,
        "decided": len(decided),
        "coverage": len(decided) / n if n else float("nan"),
        "selective_accuracy": float(np.mean([t == lab for t, lab in decided])) if decided else float("nan"),
        "accuracy_uncertain_as_miss": sum(t == lab for t, lab in decided) / n if n else float("nan"),
        "uncertain": reasons,
        "uncertain_share": {k: v / n for k, v in reasons.items()} if n else {},
        "leukaemia_called_normal": sum(t in LEUKAEMIA_KEYS and lab == NORMAL_KEY for t, lab in decided),
        "normal_recall_decided": (
            sum(t == lab == NORMAL_KEY for t, lab in decided) / max(1, sum(t == NORMAL_KEY for t in truth))
        ),
    }


def evaluate_model(
    model_path: str | Path,
    data: str | Path,
    split: str | None = None,
    part: str = "test",
    seed: int | None = None,
    out: str | Path | None = None,
) -> dict:
    """Score a model on one part of a split and write the report.

    Raises:
        ValueError: the data differ from the training data, or the requested split/seed is not the one the model was
            trained with (its test images could then be training images: a leaked, meaningless score).
    """
    from .data import reproduce_split

    prov = model_provenance(model_path)
    split = split or prov["split"]
    seed = prov["seed"] if seed is None else seed
    if (split, seed) != (prov["split"], prov["seed"]) and part != "train":
        raise ValueError(
            f"the model was trained on the {prov['split']} split with seed {prov['seed']}; scoring it on the "
            f"{split} split (seed {seed}) would count training images as held out. "
            "Evaluate a model trained on that split."
        )
    ds, parts, images = reproduce_split(data, prov["fingerprint"], split, seed, prov["image_size"])
    idx = parts[part]
    images = images[idx]
    if Path(model_path).suffix == ".pt":
        probs = model_probabilities(model_path, images)
        metrics = compute_metrics(ds.labels[idx], probs)
    else:  # an exported model is scored as it serves: its decisions too (uncertain, domain check)
        probs, decisions = model_decisions(model_path, images)
        metrics = {**compute_metrics(ds.labels[idx], probs), "decision": decision_metrics(ds.labels[idx], decisions)}
    meta = {"model": str(model_path), "data_fingerprint": ds.fingerprint, "split": split, "part": part, "seed": seed}
    out = Path(out) if out else Path("reports") / f"{Path(model_path).stem}-{split}-{part}"
    write_report(out, metrics, meta, f"{Path(model_path).name} on the {split} split ({part})")
    return {"report": str(out), "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "n": metrics["n"]}


def external_tally(results: list[dict]) -> dict:
    """What the served model said about images without ALL labels (normal blood of other laboratories): each label,
    uncertain by reason, refused by the validator (by code), and how many leukaemia labels came with p > 0.9."""
    from collections import Counter

    counted = tally(results)
    valid = [r for r in results if r["valid"]]
    leukaemia = [r for r in valid if r["label"] in LEUKAEMIA_KEYS]
    return {
        "n": len(results),
        "labels": counted.labels,
        "uncertain": counted.uncertain,
        "refused": counted.n_refused,
        "refused_codes": counted.refused,
        "leukaemia_labelled": len(leukaemia),
        "leukaemia_share": len(leukaemia) / len(results) if results else float("nan"),
        "leukaemia_confident": sum(r["confidence"] > CONFIDENT for r in leukaemia),
        "outside_domain": counted.uncertain[REASON_OUTSIDE],
        "outside_domain_share": counted.uncertain[REASON_OUTSIDE] / len(results) if results else float("nan"),
        "top_class": {k: v for k, v in Counter(r["top_class"] for r in valid).most_common()},
        "mean_confidence": float(np.mean([r["confidence"] for r in valid])) if valid else float("nan"),
    }


def score_external(
    model_path: str | Path, folders: list[str | Path], out: str | Path | None = None, progress: bool = False
) -> dict:
    """Run the full serving pipeline (validation included) on images from outside the training data.

    These folders have no ALL labels (e.g. normal cells from another laboratory), so this reports what the model
    does there, not an accuracy: per folder and sub-folder, each label, uncertain by reason, refused, and the
    leukaemia labels given with high confidence (the dangerous answer on normal blood).
    """
    from ..imaging import IMAGE_SUFFIXES, iter_image_files
    from ..predict import Predictor, analyse_path

    predictor = Predictor.load(model_path)
    summary: dict[str, dict] = {}
    for folder in folders:
        found = list(iter_image_files(folder))
        files = [Path(f) for f, _ in found]
        if not files:
            raise FileNotFoundError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        if progress:
            from tqdm import tqdm

            files_iter = tqdm(files, desc=Path(folder).name, unit="img", leave=False)
        else:
            files_iter = files
        results = [analyse_path(f, predictor).result for f in files_iter]
        summary[Path(folder).name] = external_tally(results)
        # sub-folders (e.g. PBC's cell types) say which kinds of image the answers come from
        groups: dict[str, list[dict]] = {}
        for (_, sub), r in zip(found, results):
            if sub != ".":
                groups.setdefault(sub.split("/")[0], []).append(r)
        if groups:
            summary[Path(folder).name]["by_subfolder"] = {k: external_tally(v) for k, v in sorted(groups.items())}
    out = Path(out) if out else Path("reports") / f"{Path(model_path).stem}-external"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(
        json.dumps({"model": str(model_path), "model_card": predictor.info, "folders": summary}, indent=2) + "\n"
    )
    (out / "report.md").write_text(external_markdown(Path(model_path).name, summary))
    return summary


def external_markdown(model_name: str, summary: dict) -> str:
    lines = [
        f"# {model_name} on images outside the training data",
        "",
        "No ALL labels exist for these images (normal blood from other laboratories); the honest answers are "
        "Normal, uncertain (outside the training domain) or refused. Full serving pipeline, validation included.",
        "",
        "| folder | images | normal | uncertain: outside domain / low confidence | early / mid / advanced | "
        f"leukaemia with p > {CONFIDENT} | refused | flagged outside domain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = list(summary.items())
    rows += [(f"{name}/{sub}", t) for name, s in summary.items() for sub, t in s.get("by_subfolder", {}).items()]
    for name, s in rows:
        unc = s["uncertain"]
        lines.append(
            f"| {name} | {s['n']} | {s['labels'][NORMAL_KEY]} | {unc[REASON_OUTSIDE]} / "
            f"{unc[REASON_LOW_CONFIDENCE]} | {' / '.join(str(s['labels'][k]) for k in LEUKAEMIA_KEYS)} | "
            f"{s['leukaemia_confident']} | {s['refused']} | {s['outside_domain_share']:.1%} |"
        )
    return "\n".join(lines) + "\n"
