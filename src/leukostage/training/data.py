"""The dataset: discovery in the Table 2 layout, a content fingerprint, honest splits, a decode-once cache, and cell
masks (from the segmented twins for the audit, from stain colour for the training-time attention loss)."""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..classes import CLASS_KEYS, CLASSES
from ..imaging import (
    BACKGROUND_LEVEL,
    BACKGROUND_QUANTILE,
    IMAGE_SIZE,
    IMAGE_SUFFIXES,
    MIN_BACKGROUND_LEVEL,
    ImageError,
    iter_image_files,
    load_image,
    resize_for_model,
    to_unit_range,
)

DEFAULT_DATA = Path("../shared/data")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)  # train, val, test
SPLIT_METHODS = ("random", "blocked")
BLOCK_SIZE = 30  # consecutive file numbers per block in the blocked split (about one patient's captures)
PARTS = ("train", "val", "test")


def default_data_dir() -> Path:
    """The data folder: $LEUKOSTAGE_DATA, else ../shared/data."""
    return Path(os.environ.get("LEUKOSTAGE_DATA", DEFAULT_DATA))


def resolve_image_root(data_dir: str | Path) -> Path:
    """Accept the Table 2 folder itself or a parent that holds ``taleqani_all/original`` or ``original``."""
    root = Path(data_dir)
    for candidate in (root, root / "original", root / "taleqani_all" / "original"):
        if (candidate / CLASSES[0].folder).is_dir():
            return candidate
    return root


@dataclass(frozen=True)
class Dataset:
    root: Path
    paths: tuple[Path, ...]
    labels: np.ndarray  # int64 index into CLASS_KEYS
    digests: tuple[str, ...]  # sha256 of each file's bytes

    @property
    def fingerprint(self) -> str:
        """One hash over file names, labels and contents: changes when any image is added, removed or edited."""
        h = hashlib.sha256()
        for path, label, digest in zip(self.paths, self.labels, self.digests):
            h.update(f"{CLASS_KEYS[label]}/{path.name}:{digest}\n".encode())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.paths)


def _warn_skipped(path: str) -> None:
    warnings.warn(f"skipping {path}: not an image file ({', '.join(IMAGE_SUFFIXES)})", stacklevel=3)


def discover(data_dir: str | Path) -> Dataset:
    """List the images of the four class folders, in a stable order (names sorted; sub-folders too, as every
    discovery does: :func:`leukostage.imaging.iter_image_files`); other files are skipped with a warning.

    Raises:
        FileNotFoundError: a class folder is missing (the message names it and the expected layout).
    """
    root = resolve_image_root(data_dir)
    paths: list[Path] = []
    labels: list[int] = []
    for index, info in enumerate(CLASSES):
        folder = root / info.folder
        if not folder.is_dir():
            expected = ", ".join(f"{c.folder}/" for c in CLASSES)
            raise FileNotFoundError(f"class folder {folder} is missing; expected {expected} under {root}")
        for path, _ in iter_image_files(folder, skipped=_warn_skipped):
            paths.append(Path(path))
            labels.append(index)
    digests = tuple(hashlib.sha256(p.read_bytes()).hexdigest() for p in paths)
    return Dataset(root, tuple(paths), np.asarray(labels, dtype=np.int64), digests)


def file_number(path: Path) -> int:
    """The capture number in a file name such as WBC-Malignant-Pro-095.jpg (consecutive numbers: one patient)."""
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else 0


def _duplicate_groups(ds: Dataset, members: np.ndarray) -> list[list[int]]:
    """Group indices by content hash so byte-identical files always land on the same side."""
    groups: dict[str, list[int]] = {}
    for i in members:
        groups.setdefault(ds.digests[i], []).append(int(i))
    return list(groups.values())


def _allocate(units: list[list[int]], rng: np.random.Generator, fractions: tuple[float, ...]) -> list[list[int]]:
    """Shuffle units (lists of indices that stay together) and fill train/val/test towards their target sizes."""
    order = rng.permutation(len(units))
    total = sum(len(u) for u in units)
    targets = [f * total for f in fractions]
    parts: list[list[int]] = [[] for _ in fractions]
    # val and test first, so the small held-out parts reach their size; the rest trains
    for k in order:
        unit = units[k]
        for part in (2, 1):
            if len(parts[part]) + len(unit) / 2 <= targets[part]:
                parts[part].extend(unit)
                break
        else:
            parts[0].extend(unit)
    return parts


def make_split(ds: Dataset, method: str = "random", seed: int = 42) -> dict[str, np.ndarray]:
    """Stratified train/val/test indices.

    ``random``: per class, duplicate groups are shuffled and allocated. ``blocked``: per class, files sorted by
    capture number are cut into runs of ``BLOCK_SIZE`` consecutive files, and whole runs are allocated, so one
    patient's neighbouring captures do not straddle train and test. Either way byte-identical files share a side.
    """
    if method not in SPLIT_METHODS:
        raise ValueError(f"unknown split {method!r}; expected one of {', '.join(SPLIT_METHODS)}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for label in range(len(CLASSES)):
        members = np.flatnonzero(ds.labels == label)
        groups = _duplicate_groups(ds, members)
        if method == "random":
            units = groups
        else:
            groups.sort(key=lambda g: min(file_number(ds.paths[i]) for i in g))
            units = []
            for group in groups:
                if units and len(units[-1]) < BLOCK_SIZE:
                    units[-1].extend(group)
                else:
                    units.append(list(group))
        for part, idx in zip(parts, _allocate(units, rng, SPLIT_FRACTIONS)):
            part.extend(idx)
    return {name: np.asarray(sorted(idx), dtype=np.int64) for name, idx in zip(PARTS, parts)}


def split_summary(ds: Dataset, split: dict[str, np.ndarray]) -> dict[str, dict[str, int]]:
    """Images per class in each part, for reports and model cards."""
    return {
        name: {CLASS_KEYS[c]: int((ds.labels[idx] == c).sum()) for c in range(len(CLASSES))}
        for name, idx in split.items()
    }


def default_cache_dir() -> Path:
    return Path(os.environ.get("LEUKOSTAGE_CACHE", Path.home() / ".cache" / "leukostage"))


def load_arrays(
    ds: Dataset, size: int = IMAGE_SIZE, cache_dir: str | Path | None = None, progress: bool = True
) -> np.ndarray:
    """All images resized to the model input as uint8 (N, size, size, 3), decoded once and cached on disk.

    The cache key is the dataset fingerprint plus the size, so a changed file can never be served stale.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    file = cache / f"arrays-{ds.fingerprint}-{size}.npy"
    if file.exists():
        arr = np.load(file)
        if arr.shape == (len(ds), size, size, 3):
            return arr
    out = np.empty((len(ds), size, size, 3), np.uint8)
    iterator = enumerate(ds.paths)
    if progress:
        from tqdm import tqdm  # optional nicety; tqdm ships with the train extra

        iterator = tqdm(iterator, total=len(ds), desc="decoding", unit="img")
    for i, path in iterator:
        try:
            out[i] = resize_for_model(load_image(path), size)
        except ImageError as exc:
            raise ImageError(exc.code, f"{path}: {exc.message}") from exc
    cache.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(file)
    return out


def reproduce_split(
    data: str | Path, fingerprint: str, split: str, seed: int, size: int
) -> tuple[Dataset, dict[str, np.ndarray], np.ndarray]:
    """A model's own split rebuilt on ``data``, with every image at the model's input size (:func:`load_arrays`).

    Raises:
        ValueError: ``data`` is not the data the model was trained on (its fingerprint differs), so the model's
            held-out parts cannot be rebuilt on it.
    """
    ds = discover(data)
    if ds.fingerprint != fingerprint:
        raise ValueError(
            f"data fingerprint {ds.fingerprint} differs from the model's training data ({fingerprint}): "
            "the split cannot be reproduced on this folder"
        )
    return ds, make_split(ds, split, seed), load_arrays(ds, size=size, progress=False)


def segmented_twin(path: Path) -> Path:
    """The dataset authors' segmentation of an original image: same class folder and name under segmented/."""
    parts = list(path.parts)
    idx = len(parts) - 1 - parts[::-1].index("original")
    return Path(*parts[:idx], "segmented", *parts[idx + 1 :])


MASK_THRESHOLD = 20  # a segmented pixel brighter than this (max over channels) is cell, black is background


def cell_mask(segmented_rgb: np.ndarray) -> np.ndarray:
    """Boolean cell mask from a segmented twin (cells on black)."""
    return segmented_rgb.max(axis=2) > MASK_THRESHOLD


# Training-time cell prior for every class, from colour alone. The dataset's own segmentation misses most Pro-B
# (Advanced) blasts, so it cannot guide training; stained nuclei and blast cytoplasm are far more saturated than the
# slide and the red cells once the background is made neutral.
STAIN_MASK_MIN_CHROMA = 0.18  # floor of the per-image Otsu threshold on chroma (max - min channel)


def stain_mask(rgb_uint8: np.ndarray) -> np.ndarray:
    """Boolean mask of strongly stained pixels (white cells) in an 8-bit RGB smear photo.

    Channels are divided by their 90th percentile (the empty slide), chroma is thresholded per image (Otsu, with a
    floor so a field without white cells stays nearly empty), and a 3x3 opening removes red-cell rims and specks.
    """
    x = to_unit_range(rgb_uint8)
    background = np.quantile(x.reshape(-1, 3), BACKGROUND_QUANTILE, axis=0)
    x = x * (BACKGROUND_LEVEL / np.maximum(background, MIN_BACKGROUND_LEVEL))  # what ColourNormalise does in the model
    chroma = x.max(axis=2) - x.min(axis=2)
    levels = np.clip(chroma * 255.0, 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (chroma > max(STAIN_MASK_MIN_CHROMA, otsu / 255.0)).astype(np.uint8)
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
