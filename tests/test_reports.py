"""Reports of a case: the FHIR bundle (validated as R4B), the PDF (parsed back), the CSV, on case dicts built here
from real images and the shipped model's real results (no database: reports are pure functions of the case dict)."""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json

import pytest
from fhir.resources.R4B.bundle import Bundle
from pypdf import PdfReader

from leukostage.cases import decision
from leukostage.cases.rule import summarise
from leukostage.classes import CLASS_KEYS, DISCLAIMER
from leukostage.explain import explain_image, overlay, png_bytes
from leukostage.imaging import decode_image
from leukostage.predict import analyse_bytes
from leukostage.reports import FORMATS, ReportFormat, ReportInputs, content, pdf
from leukostage.reports.csv import COLUMNS, case_csv
from leukostage.reports.fhir import case_bundle
from leukostage.reports.pdf import TOP_FIELDS, case_pdf, top_fields

CREATED, UPDATED, SIGNED, AMENDED = (
    "2026-11-26T09:00:00+00:00",
    "2026-11-26T10:30:00+00:00",
    "2026-11-26T10:00:00+00:00",
    "2026-11-26T10:30:00+00:00",
)


# --- a case dict as cases.service.case_dict makes it ---------------------------------------------------------------


def make_case(
    fields: list[tuple[str, bytes, dict]],
    status: str = "open",
    patient_ref: str | None = "Patient/p-42",
    case_id: int = 42,
    accession: str = "ACC-2026-0042",
    note: str | None = None,
) -> dict:
    """A case dict (CASE_SCHEMA.md) over (file name, bytes, result) fields, summarised by the real case rule."""
    images = [
        {
            "image_id": 100 + n,
            "sha256": hashlib.sha256(data).hexdigest(),
            "filename": name,
            "uploaded_at": CREATED,
            "uploaded_by": "tech",
            "width": None,
            "height": None,
            "result": result,
            "override": None,
            "duplicate_of": None,
            "counted": None,
        }
        for n, (name, data, result) in enumerate(fields)
    ]
    summary = summarise([i["result"] for i in images])
    case = {
        "id": case_id,
        "accession": accession,
        "patient_ref": patient_ref,
        "note": note,
        "status": "open",
        "created_at": CREATED,
        "created_by": "tech",
        "updated_at": UPDATED,
        "model": {"name": "lite0", "version": "0.1.0"},
        "images": images,
        "summary": summary,
        "review": None,
        "amendments": [],
    }
    if status in ("signed_off", "amended"):
        case["status"] = "signed_off"
        case["review"] = {
            "final_call": summary["case_call"] if summary["case_call"] in CLASS_KEYS else "mid",
            "comment": "Blasts confirmed on review.",
            "reviewer": "rev",
            "signed_off_at": SIGNED,
        }
    if status == "amended":
        case["status"] = "amended"
        case["amendments"] = [
            {
                "reason": "Second smear read",
                "by": "rev",
                "at": AMENDED,
                "final_call": "advanced",
                "comment": "Pro-B picture on the second smear.",
            }
        ]
    return settle(case)


def settle(case: dict) -> dict:
    """The keys case_dict derives from the review and the amendments (the call in force and its history)."""
    statements = decision.history(case["review"], case["amendments"])
    case.update(
        final_call=statements[-1]["final_call"] if statements else None,
        decision=statements[-1] if statements else None,
        history=statements,
        removed_images=[],
    )
    return case


def synthetic_result(label: str, probabilities: dict[str, float], reason: str | None = None) -> dict:
    top = max(probabilities, key=probabilities.get)
    return {
        "file": "x.jpg",
        "valid": True,
        "label": label,
        "confidence": probabilities[top],
        "top_class": top,
        "probabilities": probabilities,
        "uncertain_reason": reason,
        "domain": {"score": 0.1, "threshold": 0.5, "in_domain": reason != "outside_training_domain"},
    }


@pytest.fixture(scope="module")
def real_fields(taleqani, data_dir, predictor) -> list[tuple[str, bytes, dict]]:
    """Five real Mid Stage (Pre-B ALL) fields, two Advanced, and one histology image the input check refuses,
    each with the shipped model's real result."""
    paths = (
        sorted((taleqani / "cancerous" / "mid").glob("*.jpg"))[:5]
        + sorted((taleqani / "cancerous" / "advanced").glob("*.jpg"))[:2]
        + sorted((data_dir / "not_blood").glob("*"))[:1]
    )
    out = []
    for path in paths:
        data = path.read_bytes()
        out.append((path.name, data, analyse_bytes(data, path.name, predictor).result))
    assert not out[-1][2]["valid"], "the histology image should be refused by the input check"
    return out


@pytest.fixture(scope="module")
def store(real_fields) -> dict[str, bytes]:
    return {hashlib.sha256(data).hexdigest(): data for _, data, _ in real_fields}


@pytest.fixture(scope="module")
def gradcam(predictor):
    """overlay(image bytes) -> PNG, built on leukostage.explain as the web app's is."""

    def make(data: bytes) -> bytes:
        rgb = decode_image(data)
        return png_bytes(overlay(rgb, explain_image(predictor, rgb).heatmap))

    return make


@pytest.fixture(scope="module")
def card(predictor) -> dict:
    return predictor.card


@pytest.fixture
def synthetic_case() -> dict:
    fields = [
        (
            f"f{n}.jpg",
            bytes([n]),
            synthetic_result("mid", {"normal": 0.02, "early": 0.08, "mid": 0.85, "advanced": 0.05}),
        )
        for n in range(3)
    ]
    fields.append(
        (
            "u.jpg",
            b"u",
            synthetic_result("uncertain", {"normal": 0.3, "early": 0.2, "mid": 0.4, "advanced": 0.1}, "low_confidence"),
        )
    )
    fields.append(
        (
            "ood.jpg",
            b"o",
            synthetic_result(
                "uncertain", {"normal": 0.9, "early": 0.05, "mid": 0.03, "advanced": 0.02}, "outside_training_domain"
            ),
        )
    )
    fields.append(
        ("bad.jpg", b"b", {"file": "bad.jpg", "valid": False, "code": "unreadable", "reason": "not an image"})
    )
    return make_case(fields)


# --- FHIR ---------------------------------------------------------------------------------------------------------


def resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


@pytest.mark.parametrize(
    "status, report_status", [("open", "preliminary"), ("signed_off", "final"), ("amended", "amended")]
)
def test_bundle_validates_as_r4b_with_report_status_of_the_case(synthetic_case, card, status, report_status):
    case = make_case(
        [(i["filename"], bytes([n]), i["result"]) for n, i in enumerate(synthetic_case["images"])], status=status
    )
    bundle = case_bundle(case, card)
    Bundle.model_validate(json.loads(json.dumps(bundle)))  # as a client would read the JSON
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    (report,) = resources(bundle, "DiagnosticReport")
    assert report["status"] == report_status
    assert len(resources(bundle, "Observation")) == len(CLASS_KEYS) + 1
    assert len(resources(bundle, "Device")) == 1
    provenances = resources(bundle, "Provenance")
    assert len(provenances) == {"open": 1, "signed_off": 2, "amended": 3}[status]


def test_conclusion_is_the_models_call_before_sign_off_and_the_reviewers_after(synthetic_case, card):
    before = resources(case_bundle(synthetic_case, card), "DiagnosticReport")[0]
    assert before["conclusionCode"][0]["coding"][0]["code"] == "mid"
    assert before["conclusion"].startswith("Preliminary, not reviewed")
    assert DISCLAIMER in before["conclusion"]

    signed = copy.deepcopy(synthetic_case)
    signed["status"] = "signed_off"
    signed["review"] = {
        "final_call": "early",
        "comment": "Looks early to me",
        "reviewer": "rev",
        "signed_off_at": SIGNED,
    }
    after = resources(case_bundle(signed, card), "DiagnosticReport")[0]
    assert after["conclusionCode"][0]["coding"][0]["code"] == "early"
    assert "Reviewer's final call: Early Stage" in after["conclusion"]
    assert "the model's call: Mid Stage" in after["conclusion"] and "Looks early to me" in after["conclusion"]
    assert after["resultsInterpreter"][0]["display"] == "rev"
    assert after["issued"].startswith("2026-11-26T10:00:00")

    signed["status"] = "amended"
    signed["amendments"] = [
        {"reason": "recount", "by": "rev2", "at": AMENDED, "final_call": "advanced", "comment": None}
    ]
    amended = resources(case_bundle(signed, card), "DiagnosticReport")[0]
    assert amended["status"] == "amended"
    assert amended["conclusionCode"][0]["coding"][0]["code"] == "advanced"  # the latest amendment's call wins
    assert "recount" in amended["conclusion"]


def test_an_amended_report_says_only_what_is_current(synthetic_case, card):
    """Issue 21: after an amendment to Advanced the conclusion still quoted the sign-off's "Agree with model" and the
    sign-off time beside the new call. Now it is the amendment's call, who made it, when and why; the sign-off is
    history (its Provenance)."""
    case = copy.deepcopy(synthetic_case)
    case["status"] = "amended"
    case["review"] = {"final_call": "mid", "comment": "Agree with model", "reviewer": "rev", "signed_off_at": SIGNED}
    case["amendments"] = [
        {"reason": "flow cytometry", "by": "chief", "at": AMENDED, "final_call": "advanced", "comment": None}
    ]
    bundle = case_bundle(case, card)
    (report,) = resources(bundle, "DiagnosticReport")
    assert report["status"] == "amended" and report["conclusionCode"][0]["coding"][0]["code"] == "advanced"
    conclusion = report["conclusion"]
    assert conclusion.startswith("Reviewer's final call: Advanced Stage")
    assert "chief" in conclusion and "flow cytometry" in conclusion and "2026-11-26 10:30 UTC" in conclusion
    assert "Agree with model" not in conclusion and "10:00" not in conclusion  # the sign-off is history
    assert report["issued"].startswith("2026-11-26T10:30:00")
    assert [r["display"] for r in report["resultsInterpreter"]] == ["chief", "rev"]  # who made the call in force first
    activities = [p["activity"]["text"] for p in resources(bundle, "Provenance")]
    assert any("signed off; final call Mid Stage" in a for a in activities)  # the history stays in the bundle


def test_a_non_diagnostic_call_says_so(synthetic_case, card):
    case = copy.deepcopy(synthetic_case)
    case["status"] = "signed_off"
    case["review"] = {
        "final_call": "non_diagnostic",
        "comment": "one usable field",
        "reviewer": "rev",
        "signed_off_at": SIGNED,
    }
    (report,) = resources(case_bundle(case, card), "DiagnosticReport")
    Bundle.model_validate(case_bundle(case, card))
    assert report["status"] == "final"
    assert report["conclusion"].startswith("Reviewer's final call: Non-diagnostic (insufficient or unusable fields)")
    assert "cannot be called" in report["conclusion"] and "one usable field" in report["conclusion"]
    assert report["conclusionCode"][0]["coding"][0] == {
        "system": "urn:leukostage:class",
        "code": "non_diagnostic",
        "display": "Non-diagnostic",
    }


def test_ai_generated_parts_carry_the_ai_transparency_label(synthetic_case, card):
    def labels(resource):
        return {c["code"] for c in resource.get("meta", {}).get("security", [])}

    bundle = case_bundle(synthetic_case, card)
    assert all("AIAST" in labels(o) for o in resources(bundle, "Observation"))
    assert labels(resources(bundle, "DiagnosticReport")[0]) == {"AIAST"}  # wholly the model's until reviewed
    model_provenance = resources(bundle, "Provenance")[0]
    assert "AIAST" in labels(model_provenance)
    device_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Device")
    assert model_provenance["agent"][0]["who"]["reference"] == device_url

    signed = make_case(
        [(i["filename"], bytes([n]), i["result"]) for n, i in enumerate(synthetic_case["images"])], status="signed_off"
    )
    report = resources(case_bundle(signed, card), "DiagnosticReport")[0]
    assert labels(report) == {"CLINAST_AIRPT"}  # a clinician asserted it from the AI's report


@pytest.mark.parametrize(
    "patient_ref", ["Patient/p-42", "https://ehr.example/fhir/Patient/9", "Patient/p-42/_history/3", "Group/ward-3"]
)
def test_a_fhir_reference_is_the_subject_verbatim_and_nothing_else_is_said_of_a_patient(
    synthetic_case, card, patient_ref
):
    case = dict(synthetic_case, patient_ref=patient_ref)
    bundle = case_bundle(case, card)
    raw = json.dumps(bundle)
    assert not resources(bundle, "Patient")
    subjects = [r["subject"] for e in bundle["entry"] for r in [e["resource"]] if "subject" in r]
    assert subjects and all(s == {"reference": patient_ref} for s in subjects)
    assert raw.count(json.dumps(patient_ref)) == len(subjects)  # nowhere but as the subject
    for word in ("birthDate", "gender", "address", "telecom", 'Patient", '):
        assert word not in raw


@pytest.mark.parametrize("patient_ref", ["MRN 554433", "MRN 77 (ward 3)", "554433", "patient/12", "Patient/"])
def test_free_text_patient_ref_is_an_identifier_not_a_reference(synthetic_case, card, patient_ref):
    """Issue 21: "MRN 554433" went out as Reference.reference, which no FHIR server can resolve."""
    bundle = case_bundle(dict(synthetic_case, patient_ref=patient_ref), card)
    Bundle.model_validate(bundle)
    subjects = [r["subject"] for e in bundle["entry"] for r in [e["resource"]] if "subject" in r]
    assert subjects and all("reference" not in s for s in subjects)
    assert all(s["type"] == "Patient" and s["identifier"]["value"] == patient_ref for s in subjects)
    assert not resources(bundle, "Patient")


def test_no_patient_ref_means_no_subject(synthetic_case, card):
    bundle = case_bundle(dict(synthetic_case, patient_ref=None), card)
    assert all("subject" not in e["resource"] for e in bundle["entry"])


def test_class_proportions_come_from_the_summary(synthetic_case, card):
    summary = synthetic_case["summary"]
    assert summary["counted"] == 4  # 3 mid + 1 low-confidence; out-of-domain and refused do not count
    bundle = case_bundle(synthetic_case, card)
    by_code = {o["code"]["coding"][0]["code"]: o for o in resources(bundle, "Observation")}
    for key in CLASS_KEYS:
        obs = by_code[f"proportion-{key}"]
        assert obs["valueQuantity"]["value"] == pytest.approx(100 * summary["counts"][key] / 4, abs=0.01)
        assert obs["valueQuantity"]["code"] == "%"
        components = {c["code"]["coding"][0]["code"]: c for c in obs["component"]}
        assert components["field-count"]["valueInteger"] == summary["counts"][key]
        assert components["mean-probability"]["valueQuantity"]["value"] == pytest.approx(
            100 * summary["mean_probabilities"][key], abs=0.01
        )
    call = by_code["case-call"]
    assert call["valueCodeableConcept"]["coding"][0]["code"] == summary["case_call"] == "mid"
    assert call["method"]["text"] == summary["case_rule"]
    counts = {c["code"]["coding"][0]["code"]: c["valueInteger"] for c in call["component"]}
    assert counts == {"counted-fields": 4, "uncertain-fields": 2, "refused-fields": 1}


def test_a_case_without_counted_fields_is_uncertain_with_absent_proportions(card):
    case = make_case(
        [("bad.jpg", b"b", {"file": "bad.jpg", "valid": False, "code": "not_blood_smear", "reason": "no cells"})]
    )
    bundle = case_bundle(case, card)
    Bundle.model_validate(bundle)
    observations = resources(bundle, "Observation")
    assert all("dataAbsentReason" in o and "valueQuantity" not in o for o in observations[:4])
    assert observations[4]["valueCodeableConcept"]["coding"][0]["code"] == "uncertain"


def test_device_names_the_model_and_its_card(synthetic_case, card):
    ours = dict(synthetic_case, model={"name": card["name"], "version": card["version"]})  # scored by this model
    (device,) = resources(case_bundle(ours, card), "Device")
    assert device["deviceName"][0] == {"name": f"leukostage {card['name']}", "type": "model-name"}
    assert device["version"][0]["value"] == card["version"]
    assert any(card["intended_use"] == n["text"] for n in device["note"])

    other = dict(synthetic_case, model={"name": "paper", "version": "0.0.9"})
    (device,) = resources(case_bundle(other, card), "Device")
    assert device["deviceName"][0]["name"] == "leukostage paper" and device["version"][0]["value"] == "0.0.9"
    assert all(card["intended_use"] != n["text"] for n in device["note"])  # that card is not this model's


def test_sign_off_and_amendments_have_provenance(card, synthetic_case):
    case = make_case(
        [(i["filename"], bytes([n]), i["result"]) for n, i in enumerate(synthetic_case["images"])], status="amended"
    )
    bundle = case_bundle(case, card)
    report_url = bundle["entry"][0]["fullUrl"]
    _, sign_off, amendment = resources(bundle, "Provenance")
    assert sign_off["target"] == [{"reference": report_url}]
    assert sign_off["recorded"].startswith("2026-11-26T10:00:00")
    assert sign_off["agent"][0]["type"]["coding"][0]["code"] == "verifier"
    assert sign_off["agent"][0]["who"]["identifier"]["value"] == "rev"
    assert amendment["reason"][0]["text"] == "Second smear read"
    assert "Advanced Stage" in amendment["activity"]["text"]


def test_every_reference_inside_the_bundle_resolves(card, synthetic_case):
    bundle = case_bundle(
        make_case(
            [(i["filename"], bytes([n]), i["result"]) for n, i in enumerate(synthetic_case["images"])], status="amended"
        ),
        card,
    )
    urls = {e["fullUrl"] for e in bundle["entry"]}
    assert len(urls) == len(bundle["entry"])
    found = []

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str) and ref.startswith("urn:uuid:"):
                found.append(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(bundle)
    assert found and set(found) <= urls


def test_the_same_case_gives_the_same_bundle_and_another_case_other_ids(synthetic_case, card):
    assert case_bundle(synthetic_case, card) == case_bundle(copy.deepcopy(synthetic_case), card)
    other = case_bundle(dict(synthetic_case, id=43, accession="ACC-43"), card)
    assert not {e["fullUrl"] for e in other["entry"]} & {
        e["fullUrl"] for e in case_bundle(synthetic_case, card)["entry"]
    }


def test_bundle_of_real_results(real_fields, card):
    bundle = case_bundle(make_case(real_fields, status="signed_off"), card)
    Bundle.model_validate(bundle)
    assert "AIAST" in json.dumps(bundle)


# --- CSV ----------------------------------------------------------------------------------------------------------


def read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_has_one_row_per_field_with_the_models_result_and_the_override(real_fields):
    case = make_case(real_fields, status="signed_off")
    case["images"][0]["override"] = {"label": "advanced", "by": "rev", "at": SIGNED}
    text = case_csv(case)
    rows = read_csv(text)
    assert len(text.splitlines()) == len(real_fields) + 1
    assert list(rows[0]) == list(COLUMNS)
    for row, image in zip(rows, case["images"]):
        result = image["result"]
        assert row["image_id"] == str(image["image_id"]) and row["filename"] == image["filename"]
        assert row["accession"] == case["accession"] and row["sha256"] == image["sha256"]
        assert row["valid"] == str(result["valid"])
        if result["valid"]:
            assert row["model_label"] == result["label"]
            for key in CLASS_KEYS:
                assert float(row[f"probabilities_{key}"]) == pytest.approx(result["probabilities"][key])
        else:
            assert row["model_label"] == "refused" and row["refused_code"] == result["code"]
            assert row["probabilities_mid"] == ""
    assert rows[0]["override_label"] == "advanced" and rows[0]["final_field_label"] == "advanced"
    assert rows[0]["model_label"] == real_fields[0][2]["label"]  # the model's own result stays beside it


def test_csv_rows_carry_the_models_call_beside_the_final_call_in_force(real_fields):
    """Issue 21: the export showed the model's labels only; an amended case must read as amended."""
    case = make_case(real_fields, status="amended")
    rows = read_csv(case_csv(case))
    assert {(r["case_call"], r["final_call"], r["final_call_by"], r["final_call_at"]) for r in rows} == {
        (case["summary"]["case_call"], "advanced", "rev", AMENDED)
    }
    open_rows = read_csv(case_csv(make_case(real_fields)))
    assert {r["final_call"] for r in open_rows} == {""}


def test_worklist_csv_is_one_row_per_case_with_both_calls():
    from leukostage.reports.csv import WORKLIST_COLUMNS, worklist_csv

    items = [
        {
            "id": 2,
            "accession": "=cmd",
            "patient_ref": None,
            "status": "amended",
            "images": 5,
            "counted": 4,
            "case_call": "mid",
            "final_call": "advanced",
            "final_call_by": "chief",
            "final_call_at": AMENDED,
            "signed_off_by": "rev",
            "created_at": CREATED,
            "created_by": "tech",
            "updated_at": UPDATED,
        },
        {
            "id": 1,
            "accession": "A-1",
            "patient_ref": "MRN 1",
            "status": "open",
            "images": 0,
            "counted": 0,
            "case_call": "uncertain",
            "final_call": None,
            "final_call_by": None,
            "final_call_at": None,
            "signed_off_by": None,
            "created_at": CREATED,
            "created_by": "tech",
            "updated_at": UPDATED,
        },
    ]
    rows = read_csv(worklist_csv(items))
    assert list(rows[0]) == list(WORKLIST_COLUMNS)
    assert [(r["id"], r["case_call"], r["final_call"], r["final_call_by"], r["fields"]) for r in rows] == [
        ("2", "mid", "advanced", "chief", "5"),
        ("1", "uncertain", "", "", "0"),
    ]
    assert rows[0]["accession"] == "'=cmd"  # no formula from client text


@pytest.mark.parametrize("name", ['=HYPERLINK("http://x")', "+1", "-2+3", "@SUM(A1)", "\tx.jpg"])
def test_csv_neutralises_spreadsheet_formulas_in_client_text(synthetic_case, name):
    synthetic_case["images"][0]["filename"] = name
    row = read_csv(case_csv(synthetic_case))[0]
    assert row["filename"] == "'" + name


def test_csv_of_an_empty_case_is_its_header():
    assert case_csv(make_case([])).strip() == ",".join(COLUMNS)


# --- PDF ----------------------------------------------------------------------------------------------------------


def pdf_text(data: bytes) -> tuple[PdfReader, str]:
    assert data.startswith(b"%PDF")
    reader = PdfReader(io.BytesIO(data))
    return reader, "\n".join(page.extract_text() for page in reader.pages)


def squash(text: str) -> str:
    return " ".join(text.split())


def test_pdf_says_what_a_case_report_must(real_fields, store, gradcam, card):
    case = make_case(real_fields, status="amended", note="Smear 2 of 2 <b>&amp;</b>")
    case["images"][1]["override"] = {"label": "early", "by": "rev", "at": SIGNED}
    data = case_pdf(case, card, store.__getitem__, gradcam)
    reader, text = pdf_text(data)
    flat = squash(text)
    assert reader.metadata.title == "leukostage case report ACC-2026-0042"
    for needed in (
        "ACC-2026-0042",
        "Patient/p-42",
        "Amended after sign-off",
        "2026-11-26 09:00 UTC by tech",
        "2026-11-26 10:00 UTC by rev",
        "Model's call",
        "Reviewer's final call",
        case["summary"]["case_rule"],
        "Class proportions",
        "Second smear read",
        "Pro-B picture on the second smear.",
        "The model and its limits",
        "lite0 0.1.0",
        card["intended_use"],
        "Limits",
        "Smear 2 of 2 <b>&amp;</b>",  # user text printed as typed, not read as markup
        "Research decision support, not a diagnosis.",
    ):
        assert squash(needed) in flat, needed
    assert squash(DISCLAIMER) in flat
    assert f"{len(real_fields)} uploaded" in flat and "1 refused by the input check" in flat
    assert "reviewer override" in flat and "refused: not_blood_smear" in flat
    for image in case["images"]:
        assert f"#{image['image_id']}" in flat
    assert "page 1 of" in flat


def test_pdf_of_an_amended_case_shows_the_current_call_then_its_history(real_fields, store, card):
    """Issue 21: the PDF showed the sign-off's comment and time beside the amended call."""
    case = make_case(real_fields, status="amended")
    _, text = pdf_text(case_pdf(case, card, store.__getitem__, lambda d: None))
    flat = squash(text)
    current = flat.index("Amended 2026-11-26 10:30 UTC by rev. Reason: Second smear read.")
    assert flat.index("Reviewer's final call") < current < flat.index("Pro-B picture on the second smear.")
    history = flat.index("History (superseded by the call above)")
    assert current < history < flat.index("signed off as") < flat.index("Blasts confirmed on review.")
    assert flat.count("Blasts confirmed on review.") == 1  # only in the history


def test_pdf_limits_are_each_said_once_on_one_page(real_fields, store, gradcam, card):
    """Issue 21: the last page held a few bullets that repeated the card's limits in other words."""
    reader, _ = pdf_text(case_pdf(make_case(real_fields, status="amended"), card, store.__getitem__, gradcam))
    pages = [squash(page.extract_text()) for page in reader.pages]
    bullets = [line for page in reader.pages for line in page.extract_text().split("\u2022")[1:]]
    (section,) = [n for n, page in enumerate(pages) if "The model and its limits" in page]
    limits = card["limits"]
    shown = [x for x in limits if not x.startswith("Research decision support")]  # the disclaimer heads every page
    assert len(bullets) == len(shown)
    for limit in shown:
        assert squash(limit) in pages[section]  # the section is never split across pages
    assert not any(squash(x) in " ".join(pages) for x in pdf.FALLBACK_LIMITS)  # the card has its own


def test_pdf_holds_a_thumbnail_per_field_and_overlays_of_the_top_fields(real_fields, store, gradcam, card):
    case = make_case(real_fields, status="signed_off")
    explained = []
    data = case_pdf(case, card, store.__getitem__, lambda b: explained.append(b) or gradcam(b))
    reader, text = pdf_text(data)
    pictures = sum(len(page.images) for page in reader.pages)  # per page; a picture repeated on one page counts once
    top = top_fields(case)
    assert 0 < len(top) <= TOP_FIELDS
    assert explained == [store[t["sha256"]] for t in top]
    assert pictures >= len(real_fields) + len(top)  # every field's thumbnail, and a heat map per top field
    assert "image not available" not in text and "No heat map" not in text
    assert all(t["result"]["top_class"] == case["summary"]["case_call"] for t in top)
    assert len(data) < 4_000_000  # thumbnails are re-encoded small, not embedded at full size


def test_top_fields_are_the_counted_fields_that_weigh_most_for_the_call(synthetic_case):
    chosen = top_fields(synthetic_case)
    # the fields the model called mid (the call); not the low-confidence one, whose heat map would be captioned as
    # evidence for a class it does not assert (issue 18), nor the out-of-domain or refused ones
    assert [i["filename"] for i in chosen] == ["f0.jpg", "f1.jpg", "f2.jpg"]
    synthetic_case["summary"]["case_call"] = "uncertain"
    assert [i["filename"] for i in top_fields(synthetic_case)] == ["f0.jpg", "f1.jpg", "f2.jpg"]


def test_pdf_names_no_class_for_a_field_without_one(synthetic_case, card):
    """Issue 18: an uncertain field's caption said "low confidence; top Mid Stage 40.0%", and its heat map was
    captioned as evidence for Mid Stage. Now it names no class, and only fields with a class get a heat map. A refused
    field gives its code (its reason is on the case page and in the CSV)."""
    synthetic_case["images"][-1]["result"] |= {"code": "out_of_focus", "reason": "Refocus and retake."}
    data_by_sha = {i["sha256"]: bytes([n]) for n, i in enumerate(synthetic_case["images"])}
    explained = []
    data = case_pdf(synthetic_case, card, data_by_sha.__getitem__, lambda b: explained.append(b))
    flat = squash(pdf_text(data)[1])
    assert "low confidence: no class asserted" in flat and "outside the training domain: not counted" in flat
    assert "refused: out_of_focus" in flat
    assert "top Mid" not in flat and "low confidence;" not in flat
    assert explained == [bytes([n]) for n in range(3)]  # the three fields called Mid Stage, not the uncertain ones


def test_pdf_of_an_open_case_says_it_is_preliminary(real_fields, store, gradcam, card):
    _, text = pdf_text(case_pdf(make_case(real_fields), card, store.__getitem__, gradcam))
    flat = squash(text)
    assert "not yet: this report is preliminary" in flat and "Not reviewed yet" in flat


def test_pdf_survives_missing_images_and_a_model_that_cannot_explain(real_fields, card):
    def missing(sha256: str) -> bytes:
        raise FileNotFoundError(sha256)

    case = make_case(real_fields, patient_ref=None, note="Ünïcödé ταυτότητα проба")
    reader, text = pdf_text(case_pdf(case, card, missing, lambda data: None))
    flat = squash(text)
    assert flat.count("image not available") == len(real_fields)
    assert "No heat map for" in flat and "none given" in flat
    assert "ταυτότητα" in flat and "проба" in flat  # a Unicode font is embedded
    assert sum(len(page.images) for page in reader.pages) == 0


def test_pdf_of_an_empty_case(card):
    _, text = pdf_text(case_pdf(make_case([]), card, lambda s: b"", lambda d: None))
    flat = squash(text)
    assert "No field has been uploaded" in flat and "No field could be counted" in flat


def test_pdf_with_many_fields_spans_pages(real_fields, store, card):
    fields = real_fields * 8  # 64 fields, as a laboratory sends them
    reader, text = pdf_text(case_pdf(make_case(fields), card, store.__getitem__, lambda d: None))
    assert len(reader.pages) >= 3 and "page 3 of" in squash(text)
    assert f"Fields ({len(fields)})" in text


def test_the_call_in_force_is_the_latest_statement_and_keeps_no_earlier_comment():
    review = {"final_call": "mid", "comment": "Agree with model", "reviewer": "rev", "signed_off_at": SIGNED}
    first = {"final_call": "early", "comment": None, "reason": "recount", "by": "rev2", "at": AMENDED}
    case = {"review": review, "amendments": [first]}
    assert content.final_call(case) == "early"
    assert content.final_comment(case) is None  # "Agree with model" was said of Mid Stage, not of Early
    later = {"final_call": None, "comment": "later note", "reason": "typo", "by": "rev", "at": AMENDED}
    case["amendments"].append(later)
    assert content.final_call(case) == "early" and content.final_comment(case) == "later note"
    now = content.current(case)
    assert (now["by"], now["reason"], now["changed_call"]) == ("rev", "typo", False)
    lines = [content.statement_line(s) for s in content.history(case)]
    assert lines[0].startswith("2026-11-26 10:00 UTC, rev: signed off as Mid Stage.") and "Agree with model" in lines[0]
    assert "amended the call to Early Stage. Reason: recount." in lines[1]
    assert "amended, call kept (Early Stage)" in lines[2]
    assert content.final_call({"review": None, "amendments": []}) is None


def test_pdf_takes_the_longest_texts_the_service_allows(synthetic_case, card):
    """Accession 64, patient reference 255, file names 255 characters unbroken; note, comment, reason 4000."""
    case = make_case(
        [(i["filename"], bytes([n]), i["result"]) for n, i in enumerate(synthetic_case["images"])],
        status="amended",
        accession="A" * 64,
        patient_ref="P" * 255,
        note=("word " * 800)[:4000],
    )
    case["review"]["comment"] = ("comment " * 500)[:4000]
    case["amendments"][0]["reason"] = "r" * 4000
    for image in case["images"]:
        image["filename"] = "f" * 251 + ".jpg"
    reader, text = pdf_text(case_pdf(case, card, lambda s: b"", lambda d: None))
    flat = squash(text).replace(" ", "")
    assert "A" * 64 in flat and "P" * 255 in flat and "r" * 4000 in flat
    assert len(reader.pages) >= 2
    Bundle.model_validate(case_bundle(case, card))


# --- the registry of formats --------------------------------------------------------------------------------------


def test_batch_and_case_csv_name_the_probability_columns_alike():
    """One convention (``probabilities_<class>``), so a case's export and a batch run's table join on the same names
    (the case CSV said ``p_<class>`` before)."""
    from leukostage.batch.writers import COLUMN_NAMES

    expected = [f"probabilities_{key}" for key in CLASS_KEYS]
    assert [c for c in COLUMNS if c.startswith("probabilities_")] == expected
    assert [c for c in COLUMN_NAMES if c.startswith("probabilities_")] == expected
    assert not [c for c in COLUMNS if c.startswith("p_")]


def test_every_registered_format_renders_a_case(real_fields, store, card):
    case = make_case(real_fields, status="signed_off")
    inputs = ReportInputs(card, store.__getitem__, lambda data: None)
    bodies = {name: fmt.renderer()(case, inputs) for name, fmt in FORMATS.items()}
    assert set(bodies) == {"pdf", "fhir", "csv"}
    assert json.loads(bodies["fhir"]) == case_bundle(case, card)
    assert bodies["csv"] == case_csv(case)
    _, text = pdf_text(bodies["pdf"])
    assert case["accession"] in text


def test_an_unknown_format_module_is_an_import_error():
    """What the case API answers with 501 ``reports_unavailable``: the format's module is not in this build."""
    fmt = ReportFormat("nosuch", "nosuch.txt", "text/plain", "No such", "None.", ".txt", True)
    with pytest.raises(ImportError):
        fmt.renderer()
