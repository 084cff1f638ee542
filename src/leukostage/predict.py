"""Serving-side inference: an ONNX Runtime predictor and the one analysis pipeline the CLI and the web app share.

bytes -> decode -> validate -> preprocess -> infer -> decide (label or uncertain). No torch here.
:meth:`Predictor.load` is the one check that a model file and its card load: the CLI, ``serve`` (before gunicorn
starts), batch and the web app all call it, so each failure reads the same.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .classes import BY_KEY, CLASS_KEYS, NORMAL_KEY, UNCERTAIN_DISPLAY_NAME, UNCERTAIN_KEY
from .domain import DOMAIN_OUTPUT, domain_fields
from .imaging import ImageError, preprocess, read_bytes
from .outcomes import REASON_LOW_CONFIDENCE, REASON_OUTSIDE
from .validate import DEFAULT_PRESET, VALIDATOR_ENV, validate_bytes

MODELS_DIR = Path(str(resources.files("leukostage") / "models"))  # package data: present in a wheel install too
DEFAULT_MODEL_NAME = "lite0"
DEFAULT_MODEL = MODELS_DIR / f"{DEFAULT_MODEL_NAME}.onnx"


def card_path_for(model_path: str | Path) -> Path:
    """The model card beside an ONNX file: models/robust.onnx -> models/robust.card.json."""
    return Path(model_path).with_suffix("").with_suffix(".card.json")


def default_model_path() -> Path:
    """$LEUKOSTAGE_MODEL, else the model shipped inside the package (``DEFAULT_MODEL_NAME``)."""
    return Path(os.environ.get("LEUKOSTAGE_MODEL", DEFAULT_MODEL))


class ModelLoadError(ValueError):
    """A model file that exists but cannot serve: ONNX Runtime cannot load it (corrupt, truncated, not ONNX), or its
    card is not JSON or lacks what serving reads."""


def uncertain_threshold(card: dict, path: Path) -> float:
    """The card's ``decision.uncertain_below``. A card without it is refused: silently never answering
    ``uncertain`` would hide the model's doubt.

    Raises:
        ValueError: the card has no decision threshold, or one outside [0, 1].
    """
    try:
        value = float(card["decision"]["uncertain_below"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"model card of {path} has no decision.uncertain_below; re-export the model with "
            "`leukostage export` (or add the threshold to the card)"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"model card of {path}: decision.uncertain_below {value} is not a probability in [0, 1]")
    return value


def gate_validator(card: dict, path: Path) -> Path | None:
    """The validator calibration a model brings with it (``card["gate"]["validator"]``, a file beside the model:
    ``adapt`` writes one when a laboratory's own smears score under the packaged content threshold), unless one was
    chosen for the process (``--validator`` / ``$LEUKOSTAGE_VALIDATOR``, which wins). None: the active one.

    Raises:
        FileNotFoundError: the card names a validator file that is not beside the model.
    """
    name = card.get("gate", {}).get("validator")
    if name is None or os.environ.get(VALIDATOR_ENV):
        return None
    file = path.parent / name
    if not file.is_file():
        raise FileNotFoundError(
            f"model card of {path} names its validator {name}, which is not beside it; copy the {name} that came "
            "with the model next to it"
        )
    return file


# ONNX Runtime's session option that multiplies int8 as uint8 x uint8 (exact, slower) instead of uint8 x int8
EXACT_INT8_OPTION = "session.x64quantprecision"


def session_options(threads: int | None = None, exact_int8: bool | None = None):
    """ONNX Runtime options for every session that scores images (serving, batch, export, evaluation), so that the
    thresholds chosen at export and the answers served come from the same arithmetic.

    Args:
        threads: intra-op threads (default: ONNX Runtime's, all cores).
        exact_int8: x86 CPUs without VNNI add pairs of uint8 x int8 products in 16 bits, which can saturate and
            change an int8 model's answers; this makes ONNX Runtime use exact uint8 x uint8 kernels instead.
            Default: where the CPU lacks VNNI (VNNI CPUs are exact and faster without it). No effect on float models.
    """
    import onnxruntime as ort

    from .cores import cpu_has_vnni

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if exact_int8 if exact_int8 is not None else not cpu_has_vnni():
        opts.add_session_config_entry(EXACT_INT8_OPTION, "1")
    return opts


class Predictor:
    """A loaded model: ``predict_proba`` on preprocessed batches, plus the card that says how it was made.

    Preprocessing settings (input size) and the uncertainty threshold are read from the model card, so serving
    cannot disagree with training.
    """

    def __init__(self, session, card: dict, path: Path):
        self.session = session
        self.card = card
        self.path = path
        self.classes_ = tuple(c["key"] for c in card.get("classes", [])) or CLASS_KEYS
        if self.classes_ != CLASS_KEYS:
            raise ValueError(f"model {path} has classes {self.classes_}; this version expects {CLASS_KEYS}")
        self.image_size = int(card["input"]["shape"][1])
        self.uncertain_below = uncertain_threshold(card, path)
        # a Normal call's own, higher threshold (cards from before issue 18 have none: the common one applies)
        self.normal_below = float(card["decision"].get("normal_below", self.uncertain_below))
        self.outputs = [o.name for o in session.get_outputs()]
        # the domain check, where the model has one: the graph's score output and the card's threshold
        self.domain_threshold = float(card["domain"]["threshold"]) if "domain" in card else None
        if self.domain_threshold is not None and DOMAIN_OUTPUT not in self.outputs:
            raise ValueError(
                f"model card {path} names a domain threshold but the model has no {DOMAIN_OUTPUT!r} output"
            )
        self.decision_outputs = ["probabilities"] + ([DOMAIN_OUTPUT] if self.domain_threshold is not None else [])
        self.validator_path = gate_validator(card, path)

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int | None = None) -> Predictor:
        """Load an ONNX model and its ``<name>.card.json``: the one check that a model file and its card load, for
        the CLI, ``serve`` (before gunicorn starts), batch and the web app alike. Each error is one line that names
        the file and what to do.

        Args:
            threads: ONNX Runtime intra-op threads (default: all cores; give 1 per worker when serving N workers).

        Raises:
            FileNotFoundError: the model or its card is missing.
            ModelLoadError: ONNX Runtime cannot load the file, or the card is not JSON or lacks its input shape.
            ValueError: the card lacks the decision threshold or lists other classes.
        """
        import onnxruntime as ort

        path = Path(path) if path is not None else default_model_path()
        card_path = card_path_for(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"model file {path} not found; pass --model with an exported .onnx file, or unset "
                "LEUKOSTAGE_MODEL to use the shipped model"
            )
        if not card_path.is_file():
            raise FileNotFoundError(
                f"model card {card_path.name} not found beside {path}; `leukostage export` writes it there, so copy "
                "the card that came with this model next to it"
            )
        try:
            session = ort.InferenceSession(
                str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own unrelated types (InvalidProtobuf, Fail, ...) for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"model file {path} is not a loadable ONNX model ({first[:160]}); re-export it "
                "with `leukostage export`, or pass another --model"
            ) from None
        try:
            card = json.loads(card_path.read_text())
        except ValueError as exc:
            raise ModelLoadError(f"model card {card_path} is not valid JSON ({exc}); re-export the model") from None
        try:
            return cls(session, card, path)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:  # a card without the fields serving reads
            raise ModelLoadError(
                f"model card {card_path} lacks what serving reads ({type(exc).__name__}: {exc}); re-export the model"
            ) from None

    @property
    def info(self) -> dict:
        return {"name": self.card.get("name", self.path.stem), "version": self.card.get("version", "unknown")}

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, 4) for preprocessed images (N, size, size, 3) float32 in [0, 1]."""
        return self.session.run(["probabilities"], {"image": np.ascontiguousarray(batch, np.float32)})[0]

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every graph output (probabilities, features, weights) for Grad-CAM."""
        values = self.session.run(self.outputs, {"image": np.ascontiguousarray(batch, np.float32)})
        return dict(zip(self.outputs, values))

    def run_decision(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """What a decision needs: probabilities, and the domain score where the model has a domain check."""
        values = self.session.run(self.decision_outputs, {"image": np.ascontiguousarray(batch, np.float32)})
        return dict(zip(self.decision_outputs, values))

    def decide_batch(self, outputs: dict[str, np.ndarray]) -> list[dict]:
        """The contract's prediction fields for each image of a batch's outputs (see :func:`result_fields`)."""
        scores = outputs.get(DOMAIN_OUTPUT)
        return [
            result_fields(
                p,
                self.uncertain_below,
                None if scores is None else float(scores[i]),
                self.domain_threshold,
                self.normal_below,
            )
            for i, p in enumerate(outputs["probabilities"])
        ]

    def predict(self, batch: np.ndarray) -> list[str]:
        """Decided labels: a class key, or ``uncertain`` (outside the training domain, or not confident enough)."""
        return [r["label"] for r in self.decide_batch(self.run_decision(batch))]


def decide(
    probs: np.ndarray,
    uncertain_below: float,
    domain_score: float | None = None,
    domain_threshold: float | None = None,
    normal_below: float | None = None,
) -> tuple[str, float, str | None]:
    """Label, top probability and why no class is asserted (None when one is).

    The domain check comes first: far from every training image, the probabilities are not evidence for any class,
    however confident they look (most normal cells of other laboratories were called leukaemia with p > 0.9).
    """
    top = int(np.argmax(probs))
    confidence = float(probs[top])
    if domain_threshold is not None and domain_score is not None and domain_score > domain_threshold:
        return UNCERTAIN_KEY, confidence, REASON_OUTSIDE
    if confidence < uncertain_below:
        return UNCERTAIN_KEY, confidence, REASON_LOW_CONFIDENCE
    if CLASS_KEYS[top] == NORMAL_KEY and normal_below is not None and confidence < normal_below:
        return UNCERTAIN_KEY, confidence, REASON_LOW_CONFIDENCE  # a Normal call needs the higher margin
    return CLASS_KEYS[top], confidence, None


def result_fields(
    probs: np.ndarray,
    uncertain_below: float,
    domain_score: float | None = None,
    domain_threshold: float | None = None,
    normal_below: float | None = None,
) -> dict:
    """The prediction part of the public JSON contract."""
    label, confidence, reason = decide(probs, uncertain_below, domain_score, domain_threshold, normal_below)
    info = BY_KEY.get(label)
    top_key = CLASS_KEYS[int(np.argmax(probs))]
    fields = {
        "label": label,
        "display_label": info.display_name if info else UNCERTAIN_DISPLAY_NAME,
        "dataset_label": info.dataset_label if info else None,
        "confidence": round(confidence, 6),
        "top_class": top_key,
        "uncertain_reason": reason,
        "probabilities": {k: round(float(p), 6) for k, p in zip(CLASS_KEYS, probs)},
    }
    if domain_threshold is not None and domain_score is not None:
        fields["domain"] = domain_fields(domain_score, domain_threshold)
    return fields


@dataclass
class Analysis:
    """One input's outcome: the JSON-ready ``result`` plus what the web layer needs (timings, decoded image)."""

    result: dict
    timing_ms: dict = field(default_factory=dict)
    rgb: np.ndarray | None = None  # the decoded upload (its size is stored with a case's field)
    outputs: dict[str, np.ndarray] | None = None  # every graph output, kept when the caller will explain the image
    view: np.ndarray | None = None  # what the model read (the capture layer's field): Grad-CAM is drawn on it


def analyse_bytes(
    data: bytes, name: str, predictor: Predictor, preset: str = DEFAULT_PRESET, all_outputs: bool = False
) -> Analysis:
    """The whole pipeline for one image. Never raises for bad input: failures become ``valid: false`` results.

    ``all_outputs`` keeps the graph's Grad-CAM outputs too, so explaining the image needs no second inference.
    """
    t0 = time.perf_counter()
    rgb, verdict, decode_ms = validate_bytes(data, preset=preset, path=predictor.validator_path)
    t1 = time.perf_counter()
    timing = {"decode": round(decode_ms, 3), "validate": round((t1 - t0) * 1000 - decode_ms, 3)}
    if not verdict.valid:
        timing["total"] = round((t1 - t0) * 1000, 3)
        return Analysis({"file": name, **verdict.to_dict()}, timing, rgb)
    x = preprocess(verdict.view, predictor.image_size)[None]
    t2 = time.perf_counter()
    outputs = predictor.run_all(x) if all_outputs else predictor.run_decision(x)
    t3 = time.perf_counter()
    timing.update(
        preprocess=round((t2 - t1) * 1000, 3), inference=round((t3 - t2) * 1000, 3), total=round((t3 - t0) * 1000, 3)
    )
    result = {"file": name, "valid": True, **predictor.decide_batch(outputs)[0], "validator": verdict.validator}
    if verdict.checks:
        result["checks"] = verdict.checks_dict()
    if verdict.capture is not None:
        result["capture"] = verdict.capture
    return Analysis(result, timing, rgb, outputs if all_outputs else None, verdict.view)


def analyse_path(path: str | Path, predictor: Predictor, preset: str = DEFAULT_PRESET) -> Analysis:
    """Read a file and analyse it; unreadable paths become ``valid: false`` results, never exceptions."""
    try:
        data = read_bytes(path)
    except ImageError as exc:
        return Analysis({"file": str(path), "valid": False, "code": exc.code, "reason": exc.message})
    return analyse_bytes(data, str(path), predictor, preset)
