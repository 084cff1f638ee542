"""Post-training int8 quantisation: an exported float graph -> the file that is served, faster on a plain CPU.

EfficientNet-Lite was designed to run in int8 (ReLU6, no squeeze-and-excitation), and CPUs with VNNI or AVX2 run
int8 convolutions several times faster than float ones. Static QDQ quantisation: weights int8 per output channel,
activations uint8 per tensor with ranges measured on the training part (MinMax over every training image: ranges
from images the model was fitted on, never from the parts that choose or test anything).

Only the backbone is quantised: its convolutions, ReLU6 clips and residual adds (``BODY_OPS`` under ``BODY_PREFIXES``),
where nearly all the time goes. The colour normalisation (a percentile over every pixel), Grad-CAM's layer
(``conv_head``), the classifier, the Grad-CAM weights and the domain score stay float.

Quantisation moves the probabilities and the domain score a little, so the decision thresholds are chosen again on
the validation part from the quantised file as served, and the test part is scored once after that (the same rules
as :func:`leukostage.training.export.export_model`). The card records how far the quantised file moved from its float
reference on the validation part. Needs the ``train`` extra (onnx); serving the result needs only onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .. import __version__
from ..domain import DOMAIN_OUTPUT
from ..imaging import to_unit_range
from ..predict import card_path_for

BODY_OPS = ("Conv", "Clip", "Add")
BODY_PREFIXES = ("/stem/", "/blocks")  # node names of the backbone in an exported lite0 graph
CALIBRATION_BATCH = 32
QUANTISABLE_ARCHS = ("lite0",)


def body_nodes(graph, ops: tuple[str, ...] = BODY_OPS) -> list[str]:
    """Names of the backbone's nodes of type ``ops`` in an (optimised) exported graph."""
    return [n.name for n in graph.node if n.op_type in ops and n.name.startswith(BODY_PREFIXES)]


def quantize_onnx(
    float_path: str | Path, out_path: str | Path, calibration: np.ndarray, ops: tuple[str, ...] = BODY_OPS, **options
) -> list[str]:
    """Write the int8 (QDQ) version of ``float_path``; ``calibration`` is (N, H, W, 3) uint8 images (scaled to the
    model's [0, 1] input a batch at a time: the whole training part in float32 would take 1 GB).

    ``ops`` and ``options`` (keyword arguments of onnxruntime's ``quantize_static``, e.g. ``reduce_range``) replace
    the shipped settings, to compare others (experiments/quantization_variants.py).

    Returns the names of the nodes quantised.

    Raises:
        ValueError: the graph has no backbone nodes to quantise (not a lite0 export).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.starts = iter(range(0, len(calibration), CALIBRATION_BATCH))

        def get_next(self):
            start = next(self.starts, None)
            if start is None:
                return None
            return {"image": to_unit_range(calibration[start : start + CALIBRATION_BATCH])}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX Runtime's own graph optimisation first: BatchNorm folded into the convolutions, constants folded
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        nodes = body_nodes(onnx.load(str(prepared)).graph, ops)
        if not nodes:
            raise ValueError(
                f"{float_path} has no backbone nodes ({', '.join(BODY_PREFIXES)}) to quantise; only "
                f"{', '.join(QUANTISABLE_ARCHS)} exports can be quantised"
            )
        settings = {
            "quant_format": QuantFormat.QDQ,
            "per_channel": True,
            "activation_type": QuantType.QUInt8,
            "weight_type": QuantType.QInt8,
            "calibrate_method": CalibrationMethod.MinMax,
            **options,
        }
        quantize_static(
            str(prepared), str(out_path), Batches(), op_types_to_quantize=list(ops), nodes_to_quantize=nodes, **settings
        )
    return nodes


def agreement(
    reference: dict[str, np.ndarray], quantised: dict[str, np.ndarray], thresholds: tuple[float, float] | None = None
) -> dict:
    """How far the quantised outputs moved from the float reference's, on the same images."""
    p_ref, p_q = reference["probabilities"], quantised["probabilities"]
    out = {
        "max_abs_probability_change": round(float(np.abs(p_ref - p_q).max()), 4),
        "top_class_changes": int((p_ref.argmax(1) != p_q.argmax(1)).sum()),
    }
    if thresholds is not None and DOMAIN_OUTPUT in reference:
        s_ref, s_q = reference[DOMAIN_OUTPUT], quantised[DOMAIN_OUTPUT]
        out["median_domain_score_change"] = round(float(np.median(np.abs(s_q - s_ref) / s_ref)), 4)
        out["domain_decision_changes"] = int(((s_ref > thresholds[0]) != (s_q > thresholds[1])).sum())
    return out


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def quantize_model(
    model: str | Path,
    out: str | Path,
    data: str | Path,
    name: str | None = None,
    metrics_files: list[str] | None = None,
    external_files: list[str] | None = None,
) -> dict:
    """Exported float model (+ card) -> int8 model + card, calibrated on its own split's training part.

    Raises:
        ValueError: the model is not a quantisable architecture, or ``data``/a ``metrics_files`` report is not the
            data the model was trained on (fingerprint mismatch).
        FileNotFoundError: the model's card is missing.
    """
    import onnxruntime

    from .data import reproduce_split
    from .decision import shifted_views
    from .export import copied_metrics, external_summaries, fit_served_decision, onnx_outputs, val_test_outputs
    from .train import RECIPES, augmented_copies

    model, out = Path(model), Path(out)
    if model.resolve() == out.resolve():
        raise ValueError(
            f"--out {out} is the float model itself; the float file is the quantised one's reference, "
            "write the quantised model to another file"
        )
    card_file = card_path_for(model)
    if not card_file.is_file():
        raise FileNotFoundError(f"model card {card_file} not found beside {model.name}; export the model first")
    card = json.loads(card_file.read_text())
    arch = card["architecture"].get("arch")
    if arch not in QUANTISABLE_ARCHS:
        raise ValueError(f"{model} is a {arch!r} model; int8 quantisation supports {', '.join(QUANTISABLE_ARCHS)}")
    training = card["training"]
    copied = copied_metrics(metrics_files or [], training["data_fingerprint"])  # refused before any work is done
    ds, split, images = reproduce_split(
        data, training["data_fingerprint"], training["split"], training["seed"], card["architecture"]["image_size"]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    recipe = RECIPES.get((training.get("config") or {}).get("recipe"))
    calibration = images[split["train"]]
    shifted = None
    if recipe is not None and recipe.capture is not None:  # ranges and thresholds over what the model answers
        calibration = np.concatenate([calibration, augmented_copies(calibration, recipe, training["seed"])])
        shifted = shifted_views(images[split["val"]], ds.labels[split["val"]])
    nodes = quantize_onnx(model, out, calibration)

    outputs = val_test_outputs(out, images, split, shifted)
    decision, test_metrics, served_domain = fit_served_decision(outputs, ds.labels, split, training["split"], shifted)
    n_val = len(split["val"])
    reference = onnx_outputs(model, to_unit_range(images[split["val"]]))
    thresholds = (card["domain"]["threshold"], served_domain["threshold"]) if served_domain else None
    moved = agreement(reference, {name: values[:n_val] for name, values in outputs.items()}, thresholds)

    card.update(
        name=name or out.stem,
        version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        export_command=" ".join(sys.argv),
    )
    card["decision"] = decision
    if served_domain:
        card["domain"].update(
            threshold=served_domain["threshold"],
            test_flagged=served_domain["test_flagged"],
            threshold_chosen_on=served_domain["threshold_chosen_on"],
        )
    # the float card's metrics and external rows describe the float model: only this file's own measurements stay
    card["metrics"] = {f"{training['split']}_test": test_metrics, **copied}
    card.pop("external", None)
    if external_files:
        card["external"] = external_summaries(external_files)
    card["versions"] = {**card.get("versions", {}), "onnxruntime": onnxruntime.__version__}  # the quantiser's
    card["quantization"] = {
        "method": "static QDQ (onnxruntime.quantization): weights int8 per output channel, activations uint8 per "
        "tensor, MinMax ranges",
        "calibrated_on": f"{training['split']} split, train part ({len(split['train'])} images)",
        "quantised": f"{len(nodes)} backbone nodes ({', '.join(BODY_OPS)})",
        "kept_float": "colour normalisation, Grad-CAM's layer (conv_head), classifier, Grad-CAM weights, domain score",
        "reference": {"file": model.name, "sha256": sha256(model)},
        "val_change_from_reference": {**moved, "images": len(split["val"])},
        "thresholds_chosen_on": f"{training['split']} split, val part, from the quantised file",
    }
    card_path_for(out).write_text(json.dumps(card, indent=2) + "\n")
    return card
