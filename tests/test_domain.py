"""The domain check: the numpy reference, and the shipped model's answers on real in- and out-of-domain images."""

import numpy as np
import pytest

from leukostage.domain import (
    DOMAIN_NEIGHBOURS,
    DomainBank,
    bank_distance,
    domain_fields,
    knn_distance,
    part_neighbours,
    unit_rows,
)
from leukostage.imaging import load_image, preprocess, to_unit_range
from leukostage.predict import analyse_path
from leukostage.training.data import discover, load_arrays, make_split


def test_knn_distance_is_one_minus_the_kth_largest_cosine_similarity():
    rng = np.random.default_rng(0)
    bank = unit_rows(rng.normal(size=(30, 6)))
    assert np.allclose(np.linalg.norm(bank, axis=1), 1.0)
    x = rng.normal(size=(5, 6)) * 3.0  # the length of a query does not matter, only its direction
    cosine = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ bank.T
    for k in (1, 4, 30):
        expected = 1.0 - np.sort(cosine, axis=1)[:, -k]
        assert np.allclose(knn_distance(x, bank, k), expected, atol=1e-6)
    assert knn_distance(bank[:1] * 7.0, bank, 1)[0] == pytest.approx(0.0, abs=1e-6)  # a bank row is at distance 0
    assert np.allclose(knn_distance(x, bank, 1000), knn_distance(x, bank, 30))  # k larger than the bank: the farthest
    assert DOMAIN_NEIGHBOURS > 1  # one near twin in the bank must not make a field familiar


def test_a_bank_in_parts_holds_each_source_to_its_own_spread():
    """Two sources, one tight (the training hospital) and one loose (a laboratory). One pooled bank needs the loose
    source's threshold, which also lets through what lies loosely around the tight one; in parts, each scaled by its
    own validation spread, one threshold keeps both sources' fields and refuses that."""
    rng = np.random.default_rng(1)

    def around(centre, spread, n):
        return centre + spread * rng.normal(size=(n, 8))

    tight_centre, loose_centre = np.eye(8)[0], -np.eye(8)[0]
    tight, loose = unit_rows(around(tight_centre, 0.05, 80)), unit_rows(around(loose_centre, 0.25, 80))
    tight_val, loose_val = around(tight_centre, 0.05, 40), around(loose_centre, 0.25, 40)
    stranger = around(tight_centre, 0.15, 40)  # near the training hospital, but far looser than its fields
    k, whole = 5, np.concatenate([tight, loose])
    assert np.allclose(bank_distance(stranger, DomainBank((whole,), (k,), (1.0,))), knn_distance(stranger, whole, k))

    pooled = max(np.quantile(knn_distance(v, whole, k), 0.99) for v in (tight_val, loose_val))
    assert np.mean(knn_distance(stranger, whole, k) <= pooled) > 0.9  # the pooled check lets the stranger in

    covers = [np.quantile(knn_distance(v, b, k), 0.99) for v, b in ((tight_val, tight), (loose_val, loose))]
    bank = DomainBank((tight, loose), (k, k), (1.0, covers[0] / covers[1]))
    threshold = covers[0]
    assert np.mean(bank_distance(stranger, bank) <= threshold) < 0.1
    for val in (tight_val, loose_val):
        assert np.mean(bank_distance(val, bank) <= threshold) >= 0.95
    # with a pooled scale the score is never below the scaled distance to the whole bank
    both = DomainBank(bank.parts, bank.neighbours, bank.scales, pooled_scale=covers[0] / pooled)
    assert np.all(bank_distance(stranger, both) >= bank_distance(stranger, bank))
    assert np.allclose(
        bank_distance(stranger, both),
        np.maximum(bank_distance(stranger, bank), covers[0] / pooled * knn_distance(stranger, whole)),
    )


def test_each_part_reads_a_neighbour_in_proportion_to_its_size():
    assert part_neighbours([3654, 580]) == (DOMAIN_NEIGHBOURS, 8)
    assert part_neighbours([100, 1]) == (DOMAIN_NEIGHBOURS, 1)  # never zero
    assert part_neighbours([100, 400]) == (DOMAIN_NEIGHBOURS, DOMAIN_NEIGHBOURS)  # never more than k
    assert part_neighbours([12]) == (12,)  # a small bank: its farthest row


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
    name, the bank of training embeddings the graph holds, its k). Found by walking back from DOMAIN_OUTPUT:
    Sub(1, Gather/Slice(TopK(MatMul(unit embedding, bank^T))))."""
    import onnx
    from onnx import numpy_helper

    from leukostage.domain import DOMAIN_OUTPUT

    model = onnx.load(path)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    constants |= {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    node = producer[DOMAIN_OUTPUT]
    while node.op_type != "TopK":  # back through the subtraction and the k-th column's selection
        node = next(producer[i] for i in node.input if i in producer and i not in constants)
    topk = node

    def constant(name):  # a constant, through the Reshape / Transpose the exporter put around it
        while name not in constants:
            name = producer[name].input[0]
        return constants[name]

    k = int(constant(topk.input[1]).reshape(-1)[0])
    matmul = producer[topk.input[0]]
    assert matmul.op_type == "MatMul"
    bank = constant(matmul.input[1])  # (M, D) behind a Transpose, or (D, M) held as the product's own operand
    bank = bank.T if matmul.input[1] in constants else bank
    normalised = producer[matmul.input[0]]  # embedding / its norm
    embedding = normalised.input[0]
    graph.output.append(onnx.helper.make_tensor_value_info(embedding, onnx.TensorProto.FLOAT, None))
    return model, embedding, bank, k


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


def test_shipped_float_graphs_domain_score_is_the_numpy_knn_distance(reference_model_path, real_and_foreign):
    """The score the shipped float graph computes equals domain.knn_distance of its own embedding to the bank it
    holds, on real images in and out of the domain."""
    import onnxruntime as ort

    from leukostage.domain import DOMAIN_OUTPUT

    model, embedding_name, bank, k = _graph_domain_parts(reference_model_path)
    assert k == DOMAIN_NEIGHBOURS and np.allclose(np.linalg.norm(bank, axis=1), 1.0, atol=1e-5)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batch, n_ours = real_and_foreign
    score, embedding = session.run([DOMAIN_OUTPUT, embedding_name], {"image": batch})
    assert np.allclose(score, knn_distance(embedding, bank, k), atol=1e-5)
    assert np.median(score[n_ours:]) > np.quantile(score[:n_ours], 0.9)  # another laboratory's cells lie farther


def test_shipped_float_graphs_embedding_is_the_torch_models(
    reference_model_path, real_and_foreign, shipped_torch_model
):
    """The embedding the graph scores is the trained network's (rebuilt in torch from the same weights)."""
    from leukostage.training.export import embeddings

    model, embedding_name, bank, k = _graph_domain_parts(reference_model_path)
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batch, _ = real_and_foreign
    (graph_embedding,) = session.run([embedding_name], {"image": batch})
    torch_model, _ = shipped_torch_model
    uint8 = np.clip(np.rint(batch * 255.0), 0, 255).astype(np.uint8)
    assert np.allclose(embeddings(torch_model, uint8), graph_embedding, rtol=1e-3, atol=1e-3)
    assert np.allclose(
        knn_distance(embeddings(torch_model, uint8), bank, k),
        knn_distance(graph_embedding, bank, k),
        atol=1e-4,
    )
