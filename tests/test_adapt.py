"""``leukostage adapt --from-cases`` (issue 19): the signed-off fields of the case database as a laboratory's labelled
fields, on SQLite and PostgreSQL, with real fields through the real pipeline; the split that keeps a case on one
side; the command line's refusals and one tiny real adaptation whose model is then served."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require

from leukostage.cases import db, service, users
from leukostage.cases.export import EXPORT_ACTION, export_for_adaptation, field_path, signed_off_fields
from leukostage.cases.models import AuditEvent
from leukostage.classes import CLASS_KEYS, CLASSES
from leukostage.predict import analyse_bytes
from leukostage.training.adapt import LabFields, laboratory_from_cases, split_by_sample

MODEL = {"name": "test-model", "version": "1"}


@pytest.fixture
def staff(instance):
    with db.session_scope(instance.url) as s:
        return {role: users.add_user(s, role[:4], role, "password-123") for role in ("technician", "reviewer")}


def new_case(url, user, accession: str) -> int:
    with db.session_scope(url) as s:
        return service.create_case(s, user, {"accession": accession}, MODEL).id


def upload(instance, user, case_id: int, blobs: list[bytes], predictor, names: list[str] | None = None) -> list[int]:
    """Each blob through the real pipeline into the case; its image ids."""
    store = instance.store()
    ids = []
    for i, data in enumerate(blobs):
        name = names[i] if names else f"field-{i}.jpg"
        a = analyse_bytes(data, name, predictor)
        h, w = a.rgb.shape[:2] if a.rgb is not None else (None, None)
        with db.session_scope(instance.url) as s:
            ids.append(service.add_image(s, user, case_id, service.Field(name, data, a.result, w, h), store, MODEL))
    return [e["image_id"] for e in ids]


def act(url, fn, user, case_id, body):
    with db.session_scope(url) as s:
        fn(s, user, case_id, body)


def test_a_case_with_fields_of_two_classes_is_one_sample_on_one_side():
    # five cases of early, four of mid; case-1 has fields of both (the reviewer relabelled two of them)
    lab = LabFields("x")
    for case in range(1, 10):
        key = "early" if case <= 5 else "mid"
        for _ in range(3):
            lab.labels.append(CLASS_KEYS.index(key))
            lab.samples.append(f"case-{case}")
    lab.labels += [CLASS_KEYS.index("mid")] * 2
    lab.samples += ["case-1"] * 2
    lab.paths = [f"{i}.jpg" for i in range(len(lab.labels))]
    lab.digests = lab.paths[:]
    for seed in range(20):
        split = split_by_sample(lab, seed)
        sides = [{lab.samples[i] for i in split[part]} for part in ("adapt", "val")]
        assert not sides[0] & sides[1], seed
        assert sorted(np.concatenate([split["adapt"], split["val"]])) == list(range(len(lab.labels)))
        assert all(lab.counts(split["val"])[k] for k in ("early", "mid")), seed


def test_signed_off_fields_are_exported_labelled_and_recorded(instance, staff, case_fields, predictor, tmp_path):
    """Override wins over the call, an amended call over the sign-off; open and non-diagnostic cases, refused,
    removed and duplicate fields never count; each exported case gets one audit event."""
    tech, rev = staff["technician"], staff["reviewer"]
    early, mid, normal = case_fields["early"], case_fields["mid"], case_fields["normal"]

    a = new_case(instance.url, tech, "A")  # signed off early; one field overridden to mid; one refused; one removed
    a_ids = upload(instance, tech, a, [early[0], early[1], early[2], b"not an image", mid[9]], predictor)
    with db.session_scope(instance.url) as s:
        service.remove_image(s, tech, a, a_ids[4], {"reason": "another patient's smear"})
    assert a_ids[0] == upload(instance, tech, a, [early[0]], predictor)[0]  # the same photo again: one field
    act(
        instance.url,
        service.sign_off,
        rev,
        a,
        {"final_call": "early", "image_overrides": [{"image_id": a_ids[1], "label": "Mid Stage"}]},
    )

    b = new_case(instance.url, tech, "B")  # signed off advanced, amended to mid (+ an override); A's photo again
    b_ids = upload(instance, tech, b, [mid[0], mid[1], early[2]], predictor)
    act(instance.url, service.sign_off, rev, b, {"final_call": "advanced"})
    act(
        instance.url,
        service.amend,
        rev,
        b,
        {
            "reason": "second look",
            "final_call": "mid",
            "image_overrides": [{"image_id": b_ids[1], "label": "advanced"}],
        },
    )

    c = new_case(instance.url, tech, "C")  # left open
    upload(instance, tech, c, [normal[0], normal[1]], predictor)
    d = new_case(instance.url, tech, "D")  # non-diagnostic, even with an overridden field
    d_ids = upload(instance, tech, d, [normal[2], normal[3]], predictor)
    act(
        instance.url,
        service.sign_off,
        rev,
        d,
        {
            "final_call": "non_diagnostic",
            "comment": "wrong stain",
            "image_overrides": [{"image_id": d_ids[0], "label": "normal"}],
        },
    )

    expected = [
        (a, a_ids[0], "early", "final_call"),
        (a, a_ids[1], "mid", "override"),
        (a, a_ids[2], "early", "final_call"),
        (b, b_ids[0], "mid", "final_call"),
        (b, b_ids[1], "advanced", "override"),
    ]
    with db.session_scope(instance.url) as s:
        found = signed_off_fields(s)
        assert s.query(AuditEvent).filter(AuditEvent.action == EXPORT_ACTION).count() == 0  # reading records nothing
    assert [(f.case_id, f.image_id, f.label, f.labelled_by) for f in found] == expected

    out = tmp_path / "lab"
    store = instance.store()
    with db.session_scope(instance.url) as s:
        exported = export_for_adaptation(s, store, out, purpose="adapt --out lab.onnx")
    assert exported == found
    blobs = {a_ids[0]: early[0], a_ids[1]: early[1], a_ids[2]: early[2], b_ids[0]: mid[0], b_ids[1]: mid[1]}
    written = sorted(p for p in out.rglob("*") if p.is_file())
    assert written == sorted(field_path(out, f) for f in found)
    for f in found:
        path = field_path(out, f)
        folder = next(cls.folder for cls in CLASSES if cls.key == f.label)
        assert path.parent == out / folder / f"case-{f.case_id}"
        assert path.read_bytes() == blobs[f.image_id]

    with db.session_scope(instance.url) as s:
        trails = {cid: service.audit_events(s, cid) for cid in (a, b, c, d)}
    for cid in (c, d):
        assert EXPORT_ACTION not in [e["action"] for e in trails[cid]]
    for cid in (a, b):
        events = [e for e in trails[cid] if e["action"] == EXPORT_ACTION]
        assert len(events) == 1 and events[0]["user"] is None
        detail = events[0]["detail"]
        assert detail["via"] == "cli" and detail["purpose"] == "adapt --out lab.onnx"
        assert [(cid, x["image_id"], x["label"], x["labelled_by"]) for x in detail["fields"]] == [
            e for e in expected if e[0] == cid
        ]

    # the training room's reading of it: the same fields, each case one sample (whatever its fields' classes)
    lab = laboratory_from_cases(tmp_path / "again", url=instance.url, storage=instance.storage)
    got = sorted(zip(lab.samples, [CLASS_KEYS[i] for i in lab.labels]))
    assert got == sorted((f"case-{cid}", label) for cid, _, label, _ in expected)
    assert not lab.unreadable
    with db.session_scope(instance.url) as s:
        assert s.query(AuditEvent).filter(AuditEvent.action == EXPORT_ACTION).count() == 4  # A and B, twice


def test_adapt_from_cases_refuses_an_empty_database_and_too_few_fields(
    instance, staff, case_fields, predictor, tmp_path, capsys
):
    require("torch")
    from leukostage.cli import main

    argv = ["adapt", "--from-cases", "--out", str(tmp_path / "lab.onnx"), "--epochs", "1", "--quiet"]
    argv += ["--replay", str(tmp_path / "no-replay")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no field to adapt on" in err and "signed-off" in err

    tech, rev = staff["technician"], staff["reviewer"]
    cid = new_case(instance.url, tech, "A")
    upload(instance, tech, cid, case_fields["early"][:3], predictor)
    act(instance.url, service.sign_off, rev, cid, {"final_call": "early"})
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "too few fields to adapt any class" in err and "at least 8" in err and "early: 3+0" in err
    assert not (tmp_path / "lab.onnx").exists()


def test_cases_reviewed_then_adapted_from_the_database_and_served(
    instance, staff, taleqani, model_path, predictor, tmp_path, capsys
):
    """The issue's contract, end to end: cases created, real fields uploaded, reviewed with an override, signed off,
    the model adapted from the database (1 epoch, distillation only), and the adapted model served."""
    require("torch")
    from leukostage.cli import main
    from leukostage.predict import Predictor, card_path_for

    tech, rev = staff["technician"], staff["reviewer"]
    files = sorted((taleqani / "cancerous" / "early").glob("*.jpg"))[:16]
    cases = []
    for n in range(3):  # three early cases of five fields (one is relabelled mid) and an open one
        cid = new_case(instance.url, tech, f"E{n}")
        ids = upload(instance, tech, cid, [p.read_bytes() for p in files[5 * n : 5 * n + 5]], predictor)
        body = {"final_call": "early"}
        if n == 0:
            body["image_overrides"] = [{"image_id": ids[0], "label": "mid"}]
        act(instance.url, service.sign_off, rev, cid, body)
        cases.append(cid)
    upload(instance, tech, new_case(instance.url, tech, "open"), [files[15].read_bytes()], predictor)

    out = tmp_path / "lab.onnx"
    argv = ["adapt", "--from-cases", "--out", str(out), "--epochs", "1", "--quiet"]
    assert main(argv + ["--base", str(model_path), "--replay", str(tmp_path / "no-replay")]) == 0
    printed = capsys.readouterr().out
    assert "classes adapted: early" in printed and "from 15 fields of 3 signed-off cases" in printed
    card = json.loads(card_path_for(out).read_text())
    lab = card["adaptation"]["laboratory"]
    assert lab["data"] == "signed-off cases of the case database" and lab["cases"] == cases and lab["fields"] == 15
    assert card["adaptation"]["classes_adapted"] == ["early"]
    assert card["adaptation"]["split"]["rule"].startswith("by case")
    with db.session_scope(instance.url) as s:
        assert s.query(AuditEvent).filter(AuditEvent.action == EXPORT_ACTION).count() == 3

    served = Predictor.load(out)
    result = analyse_bytes(files[0].read_bytes(), "field.jpg", served).result
    assert result["valid"] and result["label"] in (*CLASS_KEYS, "uncertain")


def test_the_laboratory_content_threshold_follows_its_own_smears_within_the_margin():
    from leukostage.training.adapt import LAB_CONTENT_MARGIN, laboratory_content_threshold

    active = 0.98
    smears = np.linspace(0.95, 1.0, 200)
    assert laboratory_content_threshold(smears, active) == pytest.approx(0.95)  # every one of its smears passes
    assert laboratory_content_threshold(np.full(50, 0.99), active) == active  # never raised above the active one
    assert laboratory_content_threshold(np.append(smears, 0.2), active) == pytest.approx(active - LAB_CONTENT_MARGIN)
    assert laboratory_content_threshold(np.array([np.nan, np.nan]), active) == active  # no field reached the check


def write_lab_d_mid_fields(taleqani, folder) -> None:
    """120 real Mid Stage fields re-made by lab-d (a pinker stain, lower magnification, blur, JPEG 40) into
    ``folder``: smears the packaged validator finds unusual, so adapt writes the laboratory's validator for them
    (with 60, the validator refitted on 2026-12-04 left none of those it refused within the laboratory's margin)."""
    from leukostage.training.shifts import LABORATORIES, write_laboratory

    mid = CLASSES[CLASS_KEYS.index("mid")]
    fields = [(str(p), CLASS_KEYS.index("mid")) for p in sorted((taleqani / mid.folder).glob("*.jpg"))[:120]]
    write_laboratory(fields, LABORATORIES["lab-d"], folder, seed=0)


def test_a_laboratorys_unusual_smears_get_its_own_validator_and_serving_with_it_lets_them_through(
    taleqani, tmp_path, model_with_card
):
    """Real fields re-made by lab-d (a pinker stain, lower magnification, blur, JPEG 40): the packaged validator
    calls some of them unusual smears; adapt's reading writes the laboratory's validator, through which they pass,
    and a model whose card names it serves them."""
    from leukostage.predict import Predictor, analyse_path
    from leukostage.training.adapt import discover_laboratory, read_through_gate

    write_lab_d_mid_fields(taleqani, tmp_path / "lab")
    lab = discover_laboratory(tmp_path / "lab")
    gated = read_through_gate(lab, tmp_path / "lab-d.onnx", seed=0)
    gate = gated.gate
    assert gate is not None and gate["fields_let_through"] > 0
    assert gate["content_threshold"] < gate["content_threshold_was"]
    validator = tmp_path / gate["validator"]
    assert json.loads(validator.read_text())["content"]["threshold"] == gate["content_threshold"]

    def with_gate(card):
        return {**card, "gate": gate}

    served = Predictor.load(model_with_card(with_gate, name="lab-d"))
    assert served.validator_path == validator
    base = Predictor.load(model_with_card(lambda card: card, name="base"))
    refused = [p for p in lab.paths if analyse_path(p, base).result.get("code") == "not_blood_smear"]
    assert refused, "the packaged validator refused none of lab-d's fields as not a smear"
    after = [analyse_path(p, served).result for p in refused]
    passed = [r for r in after if r["valid"]]
    assert len(passed) == gate["fields_let_through"]  # the ones adapt let through, and those alone
    assert all(r["validator"]["name"] == gate["validator"] for r in passed)


def test_an_adaptation_that_fails_leaves_what_was_at_out_as_it_was(taleqani, tmp_path, model_with_card):
    """lab-d's fields make the gate write a laboratory validator; the base's float graph is missing, so the run fails
    after that: the model already at --out, its card and its validator are untouched, and nothing new is left."""
    from leukostage.predict import card_path_for
    from leukostage.training.adapt import AdaptConfig, adapt, laboratory_validator_path

    write_lab_d_mid_fields(taleqani, tmp_path / "lab")
    base = model_with_card(lambda card: card, name="base")  # the int8 file and its card; no float graph beside it
    out = tmp_path / "models" / "lab-d.onnx"
    out.parent.mkdir()
    before = {out: b"the model", card_path_for(out): b"{}", laboratory_validator_path(out): b"its validator"}
    for path, data in before.items():
        path.write_bytes(data)
    with pytest.raises(FileNotFoundError, match="float graph"):
        adapt(AdaptConfig(data=str(tmp_path / "lab"), out=str(out), base=str(base), seed=0), progress=False)
    assert {p: p.read_bytes() for p in out.parent.iterdir()} == before


def test_publishing_moves_every_staged_file_and_drops_a_validator_the_new_model_does_not_use(tmp_path):
    from leukostage.training.adapt import laboratory_validator_path, publish

    out = tmp_path / "lab.onnx"
    laboratory_validator_path(out).write_text("the old model's")
    staging = tmp_path / ".staging"
    staging.mkdir()
    for name in ("lab.onnx", "lab.card.json", "lab-float.onnx", "lab-float.card.json"):
        (staging / name).write_text(name)
    publish(staging, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".staging",
        "lab-float.card.json",
        "lab-float.onnx",
        "lab.card.json",
        "lab.onnx",
    ]
    assert not any(staging.iterdir()) and out.read_text() == "lab.onnx"


def test_a_model_whose_validator_is_missing_is_refused_and_an_explicit_validator_wins(model_with_card, monkeypatch):
    from leukostage.predict import Predictor
    from leukostage.validate import VALIDATOR_ENV

    path = model_with_card(lambda card: {**card, "gate": {"validator": "gone.validator.json"}}, name="lab")
    with pytest.raises(FileNotFoundError, match="gone.validator.json"):
        Predictor.load(path)
    monkeypatch.setenv(VALIDATOR_ENV, str(path.with_name("chosen.json")))
    assert Predictor.load(path).validator_path is None


def test_the_domain_bank_has_a_part_per_source_each_held_to_its_own_validation_spread(taleqani, shipped_torch_model):
    """The adapted model's bank: the training hospital's fields and a laboratory's (real fields re-made by lab-d),
    each a part; the first keeps scale 1 and k, the other reads a neighbour in proportion to its size and is scaled so
    that its own validation fields' 99th percentile is the first's, as is the pooled distance's larger one."""
    from leukostage.domain import bank_distance, knn_distance
    from leukostage.imaging import load_image, preprocess
    from leukostage.training.adapt import domain_bank
    from leukostage.training.decision import DOMAIN_COVER
    from leukostage.training.export import embeddings
    from leukostage.training.shifts import LABORATORIES

    model, _ = shipped_torch_model
    files = [f for c in CLASSES for f in sorted((taleqani / c.folder).glob("*.jpg"))[:24]]
    views = np.stack([np.rint(preprocess(load_image(f), 224) * 255).astype(np.uint8) for f in files])
    lab = np.stack(LABORATORIES["lab-d"].apply(views, 0))
    hospital_rows, hospital_val = views[0::2], views[1::2]
    lab_rows, lab_val = lab[0::4], lab[1::4]
    bank = domain_bank(model, [(hospital_rows, hospital_val), (lab_rows, lab_val)])
    hospital, laboratory = bank.parts
    assert len(hospital) == len(hospital_rows) and len(laboratory) == len(lab_rows)
    assert np.allclose(np.linalg.norm(laboratory, axis=1), 1.0, atol=1e-5)
    assert bank.neighbours == (48, 24) and bank.scales[0] == 1.0  # 48 rows (under k: all), and half as many

    e_hospital, e_lab = embeddings(model, hospital_val), embeddings(model, lab_val)
    cover = np.quantile(knn_distance(e_hospital, hospital), DOMAIN_COVER)
    own = bank.scales[1] * knn_distance(e_lab, laboratory, bank.neighbours[1])
    assert np.quantile(own, DOMAIN_COVER) == pytest.approx(cover, rel=1e-4)
    whole = np.concatenate(bank.parts)
    pooled = [np.quantile(bank.pooled_scale * knn_distance(e, whole), DOMAIN_COVER) for e in (e_hospital, e_lab)]
    assert max(pooled) == pytest.approx(cover, rel=1e-4)
    assert np.all(bank_distance(e_lab, bank) >= bank.pooled_scale * knn_distance(e_lab, whole) - 1e-6)
