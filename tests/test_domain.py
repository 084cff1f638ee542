"""The domain check: the numpy reference, and the shipped model's answers on real in- and out-of-domain images."""

import numpy as np
import pytest

from leukostage.domain import domain_fields, mahalanobis
from leukostage.imaging import load_image, preprocess, to_unit_range
from leukostage.predict import analyse_path
from leukostage.training.data import discover, load_arrays, make_split


def test_whitened_distance_is_the_mahalanobis_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T + 0.1 * np.eye(6)
    precision = np.linalg.inv(cov)
    values, vectors = np.linalg.eigh(cov)
    w = vectors / np.sqrt(values)  # what export.fit_domain stores
    assert np.allclose(w @ w.T, precision)
    x, mean = rng.normal(size=(5, 6)), rng.normal(size=6)
    expected = np.sqrt(np.einsum("nd,de,ne->n", x - mean, precision, x - mean))
    assert np.allclose(mahalanobis(x, mean, w), expected)
    assert mahalanobis(mean[None], mean, w)[0] == 0.0


def test_domain_fields_flag_only_scores_above_the_threshold():
    assert domain_fields(3.0, 3.0)["in_domain"] is True  # the threshold itself passes (the largest val score)
    assert domain_fields(3.01, 3.0) == {"score": 3.01, "threshold": 3.0, "in_domain": False}


@pytest.fixture(scope="module")
def shipped_domain(predictor):
    if "domain" not in predictor.card:
        pytest.fail("the shipped model has no domain check (card['domain'] missing)")
    return predictor.card["domain"]


def test_shipped_card_says_how_the_domain_threshold_was_chosen(shipped_domain, predictor):
    assert shipped_domain["output"] == "domain_score"
    assert "train part" in shipped_domain["fitted_on"] and "val part" in shipped_domain["threshold_chosen_on"]
    assert shipped_domain["threshold"] > 0
    assert any("one hospital" in line for line in predictor.card["limits"])


def test_another_laboratorys_cells_are_outside_the_training_domain(shipped_domain, predictor, data_dir):
    """PBC cells (Barcelona, May Gruenwald-Giemsa) are normal blood: the shipped model must not classify them."""
    files = [
        sorted((data_dir / "pbc_sample" / kind).glob("*.jpg"))[0]
        for kind in ("lymphocyte", "neutrophil", "monocyte", "basophil")
    ]
    for r in (analyse_path(f, predictor).result for f in files):  # as served: refused for its capture, or flagged
        if not r["valid"]:
            assert r["code"] in ("magnification_out_of_range", "out_of_focus"), r  # 100x oil fields: cells too large
            continue
        assert r["label"] == "uncertain" and r["uncertain_reason"] == "outside_training_domain", r
    # the domain check itself, on the fields as they are (no capture layer in front): every one outside
    batch = np.stack([preprocess(load_image(f), predictor.image_size) for f in files])
    for r in predictor.decide_batch(predictor.run_decision(batch)):
        assert r["label"] == "uncertain" and r["uncertain_reason"] == "outside_training_domain", r
        assert r["domain"]["in_domain"] is False and r["domain"]["score"] > r["domain"]["threshold"]
        assert set(r["probabilities"]) == {"normal", "early", "mid", "advanced"}  # still given


def test_in_domain_test_images_pass_the_domain_check(shipped_domain, predictor, data_dir):
    """Images of the shipped model's own test part (never used to fit or choose anything) are in its domain."""
    training = predictor.card["training"]
    ds = discover(data_dir)
    idx = make_split(ds, training["split"], training["seed"])["test"][::4]
    images = to_unit_range(load_arrays(ds, size=predictor.image_size, progress=False)[idx])
    results = []
    for i in range(0, len(images), 32):
        results += predictor.decide_batch(predictor.run_decision(images[i : i + 32]))
    flagged = sum(r["uncertain_reason"] == "outside_training_domain" for r in results)
    assert all("domain" in r for r in results)
    assert flagged <= 0.02 * len(results), f"{flagged} of {len(results)} test images flagged outside the domain"


# --- the shipped float graph's domain output against the numpy reference ---------------------------------------------
def _graph_domain_parts(path):
    """The float graph's domain computation taken apart: (a copy of the graph that also outputs the embedding, its
    name, the mean and the whitening matrix the graph holds). Found by walking back from DOMAIN_OUTPUT:
    ReduceL2(MatMul(Sub(embedding, mean), whitening))."""
    import onnx
    from onnx import numpy_helper

    from leukostage.domain import DOMAIN_OUTPUT

    model = onnx.load(path)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    constants |= {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    norm = producer[DOMAIN_OUTPUT]
    matmul = producer[norm.input[0]]
    sub = producer[matmul.input[0]]
    assert (norm.op_type, matmul.op_type, sub.op_type) == ("ReduceL2", "MatMul", "Sub")
    mean, whitening = constants[sub.input[1]], constants[matmul.input[1]]
    assert mean.ndim == 1 and whitening.shape == (mean.size, mean.size)
    graph.output.append(onnx.helper.make_tensor_value_info(sub.input[0], onnx.TensorProto.FLOAT, None))
    return model, sub.input[0], mean, whitening


@pytest.fixture(scope="module")
def real_and_foreign(taleqani, data_dir):
    """Real images of every class of the training data and cells of another laboratory, as the graph's input."""
    from leukostage.imaging import load_image, preprocess

    files = [
        f
        for c in ("normal", "cancerous/early", "cancerous/mid", "cancerous/advanced")
        for f in sorted((taleqani / c).glob("*.jpg"))[::60][:4]
    ]
    files += sorted((data_dir / "pbc_sample").glob("*/*.jpg"))[::40][:8]
    return np.stack([preprocess(load_image(f), 224) for f in files]), len(files) - 8


def test_shipped_float_graphs_domain_score_is_the_numpy_mahalanobis(reference_model_path, real_and_foreign):
    """The score the shipped float graph computes equals domain.mahalanobis of its own embedding under the mean and
    whitening it holds, on real images in and out of the domain (it was checked on a random lite0 only)."""
    import onnxruntime as ort

    from leukostage.domain import DOMAIN_OUTPUT

    model, embedding_name, mean, whitening = _graph_domain_parts(reference_model_path)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batch, n_ours = real_and_foreign
    score, embedding = session.run([DOMAIN_OUTPUT, embedding_name], {"image": batch})
    reference = mahalanobis(embedding, mean, whitening)
    assert np.allclose(score, reference, rtol=1e-4), np.abs(score / reference - 1).max()
    assert score[n_ours:].min() > score[:n_ours].max()  # and it separates the two laboratories


def test_shipped_float_graphs_embedding_is_the_torch_models(
    reference_model_path, real_and_foreign, shipped_torch_model
):
    """The embedding the graph scores is the trained network's (rebuilt in torch from the same weights)."""
    from leukostage.training.export import embeddings

    model, embedding_name, mean, whitening = _graph_domain_parts(reference_model_path)
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batch, _ = real_and_foreign
    (graph_embedding,) = session.run([embedding_name], {"image": batch})
    torch_model, _ = shipped_torch_model
    uint8 = np.clip(np.rint(batch * 255.0), 0, 255).astype(np.uint8)
    assert np.allclose(embeddings(torch_model, uint8), graph_embedding, rtol=1e-3, atol=1e-3)
    assert np.allclose(
        mahalanobis(embeddings(torch_model, uint8), mean, whitening),
        mahalanobis(graph_embedding, mean, whitening),
        rtol=1e-3,
    )
