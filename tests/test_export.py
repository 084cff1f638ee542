import json

import numpy as np
import pytest
import torch

from leukostage.imaging import load_image, preprocess
from leukostage.training.data import discover, load_arrays, make_split
from leukostage.training.export import (
    TEMPERATURE_GRID,
    choose_uncertain_threshold,
    export_model,
    export_onnx,
    fit_temperature,
    onnx_probabilities,
)
from leukostage.training.model import ModelConfig, build_model, config_dict


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    model = build_model()
    for m in model.modules():  # non-trivial BatchNorm statistics, so parity covers them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(random_model, data_dir, tmp_path_factory):
    ds = discover(data_dir)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save(
        {
            "model": random_model.state_dict(),
            "model_config": config_dict(ModelConfig()),
            "train_config": {},
            "meta": {"fingerprint": ds.fingerprint, "split": "random", "seed": 42},
            "epoch": 1,
        },
        path,
    )
    return path


def _real_batch(taleqani, n=6, size=128):
    files = sorted(taleqani.glob("*/*.jpg"))[:3] + sorted(taleqani.glob("cancerous/*/*.jpg"))[: n - 3]
    return np.stack([preprocess(load_image(f), size) for f in files])


def _torch_probabilities(model, batch: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The reference for parity: the torch module on the same NHWC batch, softmax(logits / T)."""
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(batch).permute(0, 3, 1, 2)) / temperature, 1).numpy()


def test_onnx_matches_torch_on_real_images(random_model, taleqani, tmp_path):
    path = export_onnx(random_model, tmp_path / "m.onnx")
    batch = _real_batch(taleqani)
    ref = _torch_probabilities(random_model, batch)
    got = onnx_probabilities(path, batch)
    assert np.abs(got - ref).max() < 1e-4
    assert np.allclose(got.sum(1), 1.0, atol=1e-5)
    assert onnx_probabilities(path, batch[:1]).shape == (1, 4)  # dynamic batch


def test_shipped_onnx_is_the_torch_module_with_its_weights(shipped_torch_model, reference_model_path, taleqani):
    model, temperature = shipped_torch_model
    batch = _real_batch(taleqani, n=8, size=model.cfg.image_size)
    ref = _torch_probabilities(model, batch, temperature)
    got = onnx_probabilities(reference_model_path, batch)
    assert np.abs(got - ref).max() < 1e-4
    assert len(set(got.argmax(1))) > 1  # trained weights, not a constant answer


def test_exported_gradcam_weights_equal_autograd(random_model, taleqani, tmp_path):
    """weights[k, c] must be the spatial mean of d logit_k / d maps, the gradient taken back through the max pool."""
    import onnxruntime as ort

    path = export_onnx(random_model, tmp_path / "m.onnx")
    batch = _real_batch(taleqani, 4)
    probs, feats, weights = ort.InferenceSession(str(path)).run(None, {"image": batch})
    x = torch.from_numpy(batch).permute(0, 3, 1, 2)
    maps, _ = random_model.forward_maps(x)
    maps = maps.detach().requires_grad_(True)
    logits = random_model.forward_head(random_model.blocks[-1].pool(maps))
    assert weights.shape == (4, 4, 256)
    for k in range(4):
        (g,) = torch.autograd.grad(logits[:, k].sum(), maps, retain_graph=True)
        ref = g.mean(dim=(2, 3)).numpy()
        assert np.abs(weights[:, k] - ref).max() <= 1e-4 * np.abs(ref).max()
    assert feats.shape == (4, 256, 16, 16)  # the last conv layer, before pooling: Grad-CAM's layer
    assert np.allclose(feats, maps.detach().numpy(), atol=1e-4)


def test_colour_normalised_model_exports_with_parity(taleqani, tmp_path):
    torch.manual_seed(1)
    model = build_model(ModelConfig(colour_norm=True)).eval()
    path = export_onnx(model, tmp_path / "n.onnx")
    batch = _real_batch(taleqani)
    assert np.abs(onnx_probabilities(path, batch) - _torch_probabilities(model, batch)).max() < 1e-4


def test_export_model_writes_card_with_provenance_and_threshold(checkpoint, data_dir, tmp_path):
    card = export_model(checkpoint, tmp_path / "x.onnx", data=data_dir)
    saved = json.loads((tmp_path / "x.card.json").read_text())
    assert saved == card
    assert [c["key"] for c in card["classes"]] == ["normal", "early", "mid", "advanced"]
    assert card["input"]["shape"] == ["batch", 128, 128, 3]
    assert card["preprocessing"]["colour_normalisation"] == "none"  # a paper-architecture model without it
    assert card["training"]["split"] == "random" and card["training"]["seed"] == 42
    assert card["metrics"]["random_test"]["n"] == len(make_split(discover(data_dir), "random", 42)["test"])
    # the threshold is the smallest grid value whose answered val predictions (of the exported file) reach the
    # target with no leukaemia called Normal (none answered carries no risk): recomputed here from the definition,
    # so a wrong part, file or rule fails
    split = make_split(discover(data_dir), "random", 42)
    val_images = load_arrays(discover(data_dir), progress=False)[split["val"]].astype(np.float32) / 255.0
    val_probs = onnx_probabilities(tmp_path / "x.onnx", val_images)
    y_val = discover(data_dir).labels[split["val"]]
    conf, top = val_probs.max(1), val_probs.argmax(1)

    def safe(t):
        answered = conf >= t
        missed = (answered & (y_val != 0) & (top == 0)).any()
        return not answered.any() or ((top == y_val)[answered].mean() >= 0.99 and not missed)

    grid = np.round(np.arange(0.40, 0.99, 0.01), 2)
    assert card["decision"]["uncertain_below"] == pytest.approx(next((t for t in grid if safe(t)), grid[-1]))
    assert card["decision"]["target_selective_accuracy"] == 0.99
    assert card["calibration"]["fitted_on"].startswith("random split, val")
    assert "not a diagnosis" in card["intended_use"]


def test_uncertain_threshold_is_the_smallest_meeting_the_target():
    y = np.zeros(100, int)
    conf = np.linspace(0.3, 1.0, 100)
    probs = np.stack([conf, 1 - conf, 0 * conf, 0 * conf], 1)
    probs[:20, 0], probs[:20, 1] = 0.45, 0.55  # 20 wrong predictions, all at top probability 0.55
    assert choose_uncertain_threshold(y, probs) == pytest.approx(0.6)


def test_temperature_is_applied_in_the_graph(random_model, taleqani, tmp_path):
    batch = _real_batch(taleqani, 3)
    path = export_onnx(random_model, tmp_path / "t.onnx", temperature=2.5)
    assert np.abs(onnx_probabilities(path, batch) - _torch_probabilities(random_model, batch, 2.5)).max() < 1e-4


def test_fit_temperature_softens_overconfident_logits():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    logits = rng.normal(size=(400, 4))
    logits[np.arange(400), y] += 1.0  # weakly informative ...
    assert fit_temperature(y, logits * 10) > 4  # ... so ten-fold sharpened logits need a high temperature
    assert 0.8 <= fit_temperature(y, logits) < 1.25


def test_fit_temperature_sharpens_under_confident_logits_only_up_to_the_validation_accuracy():
    """Label smoothing leaves a model right on every validation image at ~0.92 confidence: sharpening helps, but an
    error-free validation part must not make every answer 100 % sure."""
    y = np.repeat(np.arange(4), 100)
    smoothed = np.log(np.where(np.eye(4)[y] == 1, 0.925, 0.025))  # the label-smoothing (0.1) optimum, all right
    t = fit_temperature(y, smoothed)
    assert t < 1.0  # sharpened ...
    mean_confidence = (lambda p: p.max(1).mean())(np.exp(smoothed / t) / np.exp(smoothed / t).sum(1, keepdims=True))
    assert mean_confidence <= 401 / 402 + 1e-9  # ... but not past the add-one validation accuracy
    assert t > min(TEMPERATURE_GRID)
    assert fit_temperature(y, np.eye(4)[y] * 50) > 1.0  # near-certain logits are softened to that accuracy too


# --- EfficientNet-Lite0: parity, Grad-CAM weights and the in-graph domain score -----------------------------------
@pytest.fixture(scope="module")
def random_lite():
    """The ImageNet body with a random 4-class head: real BatchNorm statistics and features that vary between
    images (a randomly initialised body gives near-constant features, a degenerate covariance)."""
    torch.manual_seed(2)
    return build_model(ModelConfig(arch="lite0", image_size=224, colour_norm=True, pretrained=True)).eval()


def test_lite0_onnx_matches_torch_with_gradcam_weights_and_domain_score(random_lite, taleqani, data_dir, tmp_path):
    """One export covers the whole serving graph of the new architecture: probabilities, the Grad-CAM channel weights
    (autograd through the global average pool) and the domain score (numpy k-NN distance on torch's embeddings)."""
    import onnxruntime as ort

    from leukostage.domain import DomainBank, bank_distance, knn_distance, unit_rows
    from leukostage.training.export import embeddings

    batch = _real_batch(taleqani, size=224)
    uint8 = np.round(batch * 255).astype(np.uint8)
    # a bank from real images: a few dozen training-like fields (fewer than k: the score is then the farthest row)
    fit_files = sorted(taleqani.glob("cancerous/early/*.jpg"))[10:40] + sorted(taleqani.glob("normal/*.jpg"))[10:40]
    fit_images = np.stack([np.round(preprocess(load_image(f), 224) * 255).astype(np.uint8) for f in fit_files])
    bank = embeddings(random_lite, fit_images)
    path = export_onnx(random_lite, tmp_path / "lite.onnx", 224, domain=bank)
    sess = ort.InferenceSession(str(path))
    assert [o.name for o in sess.get_outputs()] == ["probabilities", "features", "weights", "domain_score"]
    probs, feats, weights, score = sess.run(None, {"image": batch})
    assert np.abs(probs - _torch_probabilities(random_lite, batch)).max() < 1e-4
    # domain: the graph's score is the numpy computation on the torch module's embedding
    ref_score = knn_distance(embeddings(random_lite, uint8), unit_rows(bank))
    assert np.allclose(score, ref_score, atol=1e-4)
    # a bank in parts (an adapted model's): the graph's score is domain.bank_distance
    parts = DomainBank((unit_rows(bank[:40]), unit_rows(bank[40:])), (20, 3), (1.0, 0.6), pooled_scale=0.8)
    parted = export_onnx(random_lite, tmp_path / "parted.onnx", 224, domain=parts)
    (parted_score,) = ort.InferenceSession(str(parted)).run(["domain_score"], {"image": batch})
    reference = bank_distance(embeddings(random_lite, uint8), parts)
    assert np.allclose(parted_score, reference, atol=1e-4) and not np.allclose(parted_score, score, atol=1e-3)
    # Grad-CAM weights: spatial mean of d logit_k / d maps
    x = torch.from_numpy(batch).permute(0, 3, 1, 2)
    maps, _ = random_lite.forward_maps(x)
    maps = maps.detach().requires_grad_(True)
    logits = random_lite.forward_head(maps.mean((2, 3), keepdim=True))
    assert feats.shape == (6, 1280, 7, 7) and weights.shape == (6, 4, 1280)
    for k in range(4):
        (g,) = torch.autograd.grad(logits[:, k].sum(), maps, retain_graph=True)
        ref = g.mean(dim=(2, 3)).numpy()
        assert np.abs(weights[:, k] - ref).max() <= 1e-4 * np.abs(ref).max()


def test_domain_score_ranks_another_laboratory_far(random_lite, taleqani, data_dir):
    """Even an untrained body's features separate PBC cells from Taleqani fields; with a
    bank of Taleqani images, held-out Taleqani images must score lower than the other laboratory's."""
    from leukostage.domain import knn_distance, unit_rows
    from leukostage.training.export import embeddings

    def load(files):
        return np.stack([np.round(preprocess(load_image(f), 224) * 255).astype(np.uint8) for f in files])

    fit = load(
        [
            f
            for c in ("normal", "cancerous/early", "cancerous/mid", "cancerous/advanced")
            for f in sorted((taleqani / c).glob("*.jpg"))[:25]
        ]
    )
    held_out = load([f for c in ("normal", "cancerous/mid") for f in sorted((taleqani / c).glob("*.jpg"))[-5:]])
    other = load(sorted((data_dir / "pbc_sample").rglob("*.jpg"))[::40][:10])
    bank = unit_rows(embeddings(random_lite, fit))
    near = knn_distance(embeddings(random_lite, held_out), bank, 10)
    far = knn_distance(embeddings(random_lite, other), bank, 10)
    assert np.median(far) > np.median(near)
