import shutil
from pathlib import Path

import numpy as np
import pytest

from leukostage.classes import CLASSES
from leukostage.imaging import load_image, preprocess, to_unit_range
from leukostage.training.data import (
    cell_mask,
    discover,
    file_number,
    load_arrays,
    make_split,
    reproduce_split,
    segmented_twin,
    split_summary,
    stain_mask,
)

DUPLICATE_PAIRS = 36  # byte-identical pairs on disk (sha256), all in cancerous/advanced/ (the data README says 40)
PATIENT_BLOCK = 30  # consecutive capture numbers the blocked split keeps together (about one patient's captures)


@pytest.fixture(scope="module")
def dataset(data_dir):
    return discover(data_dir)


def _tiny_tree(root: Path, taleqani: Path, per_class: int = 3) -> Path:
    for c in CLASSES:
        (root / c.folder).mkdir(parents=True)
        for f in sorted((taleqani / c.folder).glob("*.jpg"))[:per_class]:
            shutil.copy(f, root / c.folder / f.name)
    return root


def test_discovers_the_four_class_folders(dataset):
    assert len(dataset) == 2607
    assert np.bincount(dataset.labels).tolist() == [404, 788, 770, 645]


def test_missing_class_folder_is_named(tmp_path, taleqani):
    root = _tiny_tree(tmp_path, taleqani)
    shutil.rmtree(root / "cancerous" / "mid")
    with pytest.raises(FileNotFoundError, match="cancerous/mid"):
        discover(root)


def test_non_image_files_are_skipped_with_a_warning(tmp_path, taleqani):
    root = _tiny_tree(tmp_path, taleqani)
    (root / "normal" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="notes.txt"):
        ds = discover(root)
    assert len(ds) == 12


def test_fingerprint_changes_when_content_changes(tmp_path, taleqani):
    root = _tiny_tree(tmp_path, taleqani)
    before = discover(root).fingerprint
    victim = next((root / "normal").glob("*.jpg"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert discover(root).fingerprint != before


@pytest.mark.parametrize("method", ["random", "blocked"])
def test_splits_are_stratified_disjoint_and_keep_duplicates_together(dataset, method):
    split = make_split(dataset, method, seed=42)
    parts = [set(v.tolist()) for v in split.values()]
    assert sum(len(p) for p in parts) == len(dataset)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    side = {}
    for name, idx in split.items():
        for i in idx:
            side.setdefault(dataset.digests[i], set()).add(name)
    assert len(dataset) - len(side) == DUPLICATE_PAIRS  # the byte-identical pairs exist ...
    assert all(len(s) == 1 for s in side.values())  # ... and never straddle
    counts = split_summary(dataset, split)
    for c in CLASSES:
        total = sum(counts[p][c.key] for p in counts)
        assert 0.10 <= counts["test"][c.key] / total <= 0.20
    assert make_split(dataset, method, 42)["test"].tolist() == split["test"].tolist()  # seeded


def test_blocked_split_keeps_runs_of_consecutive_numbers_on_one_side(dataset):
    """Every run of test images (in capture-number order) is at least one patient block long, except a run cut
    short by the end of a class; the block length is stated here, not read from the module under test."""
    split = make_split(dataset, "blocked", seed=42)
    test = set(split["test"].tolist())
    for label in range(len(CLASSES)):
        members = sorted(np.flatnonzero(dataset.labels == label), key=lambda i: file_number(dataset.paths[i]))
        sides = [i in test for i in members]
        runs, start = [], 0
        for k in range(1, len(sides) + 1):
            if k == len(sides) or sides[k] != sides[start]:
                runs.append((sides[start], start, k))
                start = k
        test_runs = [(a, b) for in_test, a, b in runs if in_test]
        assert test_runs, CLASSES[label].key
        assert all(b - a >= PATIENT_BLOCK for a, b in test_runs if a > 0 and b < len(sides)), test_runs


def test_random_and_blocked_test_sets_differ(dataset):
    assert make_split(dataset, "random", 42)["test"].tolist() != make_split(dataset, "blocked", 42)["test"].tolist()


def test_training_and_inference_preprocessing_give_identical_tensors(dataset, tmp_path):
    cached = load_arrays(dataset, progress=False)
    for i in (0, 777, 2606):
        train_tensor = to_unit_range(cached[i])
        serve_tensor = preprocess(load_image(dataset.paths[i]))
        assert train_tensor.dtype == serve_tensor.dtype == np.float32
        assert np.array_equal(train_tensor, serve_tensor)


def test_cache_is_keyed_by_fingerprint(tmp_path, taleqani):
    root = _tiny_tree(tmp_path / "d", taleqani, per_class=2)
    ds = discover(root)
    arr = load_arrays(ds, cache_dir=tmp_path / "cache", progress=False)
    assert arr.shape == (8, 128, 128, 3) and arr.dtype == np.uint8
    assert (tmp_path / "cache" / f"arrays-{ds.fingerprint}-128.npy").exists()


def test_cell_masks_come_from_segmented_twins(dataset):
    twin = segmented_twin(dataset.paths[0])
    assert twin.exists() and "segmented" in twin.parts and twin.name == dataset.paths[0].name
    share = cell_mask(load_image(twin)).mean()
    assert 0.02 < share < 0.4  # cells are a minority of the field


def test_stain_mask_finds_a_purple_cell_on_any_tinted_slide():
    yy, xx = np.mgrid[:96, :96]
    disc = (yy - 40) ** 2 + (xx - 50) ** 2 < 15**2
    for slide in ((235, 225, 200), (200, 215, 240), (230, 230, 230)):
        rgb = np.empty((96, 96, 3), np.uint8)
        rgb[:] = slide
        rgb[disc] = (110, 60, 170)
        mask = stain_mask(rgb)
        assert (mask & disc).sum() / (mask | disc).sum() > 0.9, slide


def test_stain_mask_of_an_empty_slide_is_empty():
    assert not stain_mask(np.full((64, 64, 3), (225, 215, 230), np.uint8)).any()


def test_stain_mask_covers_the_white_cells_of_a_real_smear(sample_smears):
    """The training-time cell prior must find most of what the dataset authors segmented as cells."""
    rgb = load_image(sample_smears["early"])
    mask, theirs = stain_mask(rgb), cell_mask(load_image(segmented_twin(sample_smears["early"])))
    assert 0.01 < mask.mean() < 0.5
    assert (mask & theirs).sum() / theirs.sum() > 0.6


def test_reproduce_split_rebuilds_the_models_parts_and_refuses_other_data(data_dir):
    ds = discover(data_dir)
    got, parts, images = reproduce_split(data_dir, ds.fingerprint, "blocked", 42, 128)
    want = make_split(ds, "blocked", 42)
    assert got.fingerprint == ds.fingerprint and all(np.array_equal(parts[k], want[k]) for k in want)
    assert images.shape == (len(ds), 128, 128, 3) and images.dtype == np.uint8
    with pytest.raises(ValueError, match="differs from the model's training data"):
        reproduce_split(data_dir, "0" * 16, "blocked", 42, 128)
