"""Adapt the model to a laboratory: its own reviewed fields, a short fine-tune, its own thresholds (issue 19).

``leukostage adapt --data DIR`` (the Table 2 layout, optionally a sub-folder per sample) or ``--from-cases`` (the
signed-off fields of the case database). The laboratory's fields are split into an adaptation part and a validation
part by sample, never one sample on both sides; the base model (the shipped one unless ``--base``) is fine-tuned on
the adaptation part with the capture recipe's augmentation, while replaying the base model's own training images when
they are at hand (``--replay DIR`` or ``$LEUKOSTAGE_DATA``), or else distilling the base model's answers, so that
what it knew is kept. The domain check is refitted to include the laboratory, its thresholds are chosen on the
laboratory's validation part, and the result is a new model file with a card that names its base and its data: the
base model is never overwritten.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..classes import CLASS_KEYS, CLASSES
from ..imaging import IMAGE_SUFFIXES, ImageError, load_image

MIN_ADAPT_PER_CLASS = 8  # fields of a class in the adaptation part below which the class is not adapted
MIN_VAL_PER_CLASS = 3  # ... and in the validation part (the thresholds need some of each)
VAL_SHARE = 0.3  # of each class's samples, for the laboratory's validation part
RUN_LENGTH = 10  # without sample folders: runs of this many consecutive file numbers are taken as one sample


@dataclass
class LabFields:
    """A laboratory's labelled fields: path (or case image id), class index, sample, and what could not be read."""

    root: str
    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    @property
    def fingerprint(self) -> str:
        """One hash over classes, samples and contents: the card names the data it was adapted on."""
        h = hashlib.sha256()
        for label, sample, digest in sorted(zip(self.labels, self.samples, self.digests)):
            h.update(f"{CLASS_KEYS[label]}/{sample}:{digest}\n".encode())
        return h.hexdigest()[:16]

    def counts(self, idx: np.ndarray | None = None) -> dict[str, int]:
        labels = np.asarray(self.labels)[idx] if idx is not None else np.asarray(self.labels)
        return {k: int((labels == i).sum()) for i, k in enumerate(CLASS_KEYS)}


def _file_number(name: str) -> int | None:
    digits = re.findall(r"\d+", name)
    return int(digits[-1]) if digits else None


def discover_laboratory(root: str | Path) -> LabFields:
    """The Table 2 layout under ``root``: a class folder holds images, or one sub-folder of images per sample.

    Without sample folders, runs of :data:`RUN_LENGTH` consecutive file numbers are one sample (a laboratory numbers
    one patient's fields consecutively). Unreadable files are listed, not raised.

    Raises:
        FileNotFoundError: no class folder at all under ``root`` (the message gives the layout).
    """
    root = Path(root)
    lab = LabFields(str(root))
    found = False
    for index, info in enumerate(CLASSES):
        folder = root / info.folder
        if not folder.is_dir():
            continue
        found = True
        for path in sorted(folder.rglob("*")):
            if path.is_dir() or path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = path.relative_to(folder)
            if len(rel.parts) > 1:
                sample = f"{info.key}/{rel.parts[0]}"
            else:
                number = _file_number(path.stem)
                sample = f"{info.key}/run-{number // RUN_LENGTH if number is not None else path.stem}"
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                load_image(path)
            except (ImageError, OSError) as exc:
                lab.unreadable.append((str(path), getattr(exc, "message", str(exc))))
                continue
            lab.paths.append(str(path))
            lab.labels.append(index)
            lab.samples.append(sample)
            lab.digests.append(digest)
    if not found:
        expected = ", ".join(f"{c.folder}/" for c in CLASSES)
        raise FileNotFoundError(f"no class folder under {root}; expected some of {expected} (Table 2 layout)")
    return lab


def split_by_sample(lab: LabFields, seed: int = 42) -> dict[str, np.ndarray]:
    """Adaptation and validation parts, by sample: per class, about :data:`VAL_SHARE` of the samples (at least one
    where the class has two or more) go to validation; a sample is never on both sides."""
    rng = np.random.default_rng(seed)
    samples = np.asarray(lab.samples)
    labels = np.asarray(lab.labels)
    val: list[int] = []
    for c in range(len(CLASS_KEYS)):
        names = sorted(set(samples[labels == c]))
        if len(names) < 2:
            continue
        order = rng.permutation(len(names))
        n_val = max(1, round(VAL_SHARE * len(names)))
        chosen = {names[i] for i in order[:n_val]}
        val += [i for i in np.flatnonzero(labels == c) if samples[i] in chosen]
    val_idx = np.asarray(sorted(val), dtype=np.int64)
    adapt_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return {"adapt": adapt_idx, "val": val_idx}


@dataclass(frozen=True)
class Coverage:
    """Which classes the laboratory's data can adapt, and a sentence for each that it cannot."""

    adapted: tuple[str, ...]
    not_adapted: dict[str, str]


def class_coverage(lab: LabFields, split: dict[str, np.ndarray]) -> Coverage:
    """Classes with enough fields on both sides are adapted; the others keep the base model's knowledge.

    Raises:
        ValueError: not a single class has enough fields (the message says how many are needed).
    """
    adapt, val = lab.counts(split["adapt"]), lab.counts(split["val"])
    adapted, missing = [], {}
    for key in CLASS_KEYS:
        if adapt[key] >= MIN_ADAPT_PER_CLASS and val[key] >= MIN_VAL_PER_CLASS:
            adapted.append(key)
        elif adapt[key] + val[key] == 0:
            missing[key] = "no fields (class folder missing or empty): kept as the base model knows it"
        else:
            missing[key] = (
                f"{adapt[key]} adaptation and {val[key]} validation fields; at least {MIN_ADAPT_PER_CLASS} and "
                f"{MIN_VAL_PER_CLASS} (from different samples) are needed: kept as the base model knows it"
            )
    if not adapted:
        raise ValueError(
            f"too few fields to adapt any class: each class needs at least {MIN_ADAPT_PER_CLASS} fields for "
            f"adaptation and {MIN_VAL_PER_CLASS} for validation, from at least two samples; found "
            + ", ".join(f"{k}: {adapt[k]}+{val[k]}" for k in CLASS_KEYS)
        )
    return Coverage(tuple(adapted), missing)
