"""A case as a FHIR R4 Bundle, built from ``fhir.resources`` R4B models (R4B is wire-compatible with R4 here).

What goes in, and why:

- a ``DiagnosticReport``: status ``preliminary`` until a reviewer signs off, ``final`` after, ``amended`` after an
  amendment; its ``conclusion`` and ``conclusionCode`` carry the reviewer's call in force once there is one (after an
  amendment: the amended call, who amended it, when and why, and only the amendment's own comment), the model's call
  before (and say which); a ``non_diagnostic`` call says that the sample cannot be called;
- one ``Observation`` per class proportion (the share of counted fields the model gave that class, with the field
  count and the mean probability as components) and one for the model's case call;
- a ``Device`` for the model that made the results (name, version; its card's intended use);
- a ``Provenance`` for the model's output (agent: the Device), one for the reviewer's sign-off, one per amendment
  (the history behind the current call).

AI-made content is labelled with HL7's AI transparency security labels in ``meta.security``: ``AIAST`` (AI
asserted, v3-ObservationValue) on every Observation and on an unreviewed report; a signed-off report carries
``CLINAST_AIRPT`` (clinician asserted from AI reported) instead. The patient is only ever ``patient_ref``: a FHIR
reference (``Patient/123``, an absolute URL of one, a ``urn:uuid:``) is the subject reference verbatim; anything else
(``MRN 554433``) is the subject's identifier, not a reference. Nothing else about a patient is written, and no Patient
resource is made up.
Resource ids are UUIDs derived from the case id and accession, so the same case gives the same bundle.
"""

from __future__ import annotations

import json
import re
import uuid

from fhir.resources.R4B.annotation import Annotation
from fhir.resources.R4B.bundle import Bundle, BundleEntry
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.device import Device, DeviceDeviceName, DeviceVersion
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.meta import Meta
from fhir.resources.R4B.observation import Observation, ObservationComponent
from fhir.resources.R4B.provenance import Provenance, ProvenanceAgent
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference

from ..classes import BY_KEY, CLASS_KEYS, DISCLAIMER, NON_DIAGNOSTIC_KEY, UNCERTAIN_KEY
from . import ReportInputs, content

# Code systems. HL7's where one fits; the class keys and the report's own codes are this project's (a URN, since
# the classes are a dataset's subtypes under a paper's names, which no public terminology codes).
V3_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
AI_TRANSPARENCY = "http://hl7.org/fhir/uv/aitransparency/CodeSystem/AddedProvenanceCS"
V2_DIAGNOSTIC_SECTION = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PROVENANCE_AGENT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
UCUM = "http://unitsofmeasure.org"
CLASS_SYSTEM = "urn:leukostage:class"  # normal | early | mid | advanced | uncertain | non_diagnostic
CODE_SYSTEM = "urn:leukostage:code"  # what the report and each observation measure
USER_SYSTEM = "urn:leukostage:user"  # the application's user names (reviewers), not a person registry

AI_ASSERTED = Coding(system=V3_OBSERVATION_VALUE, code="AIAST", display="Artificial Intelligence asserted")
CLINICIAN_ASSERTED_FROM_AI = Coding(
    system=AI_TRANSPARENCY, code="CLINAST_AIRPT", display="Clinician Asserted from AI Reported"
)
REPORT_STATUS = {"open": "preliminary", "signed_off": "final", "amended": "amended"}
# A reference FHIR can resolve for a subject (R4's Reference.reference pattern, the subject's target types): a relative
# one, an absolute URL of one, or a bundle-local urn:uuid. Any other patient_ref is an identifier.
SUBJECT_REFERENCE = re.compile(
    r"^(?:https?://\S+/)?(?:Patient|Group|Device|Location)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
    r"|^urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
ID_NAMESPACE = uuid.UUID("6f0b6a52-3f0e-4d35-9a43-1c5d0f8a2b71")  # fixed: ids are stable across exports


def render(case: dict, inputs: ReportInputs) -> str:
    """The ``fhir`` format of the registry (see :data:`leukostage.reports.FORMATS`): the bundle as JSON text."""
    return json.dumps(case_bundle(case, inputs.card))


def case_bundle(case: dict, card: dict) -> dict:
    """The case as a FHIR Bundle (type ``collection``), JSON-ready, validated as R4B on the way out.

    Args:
        case: the case dict (``cases.service.case_dict``).
        card: the serving model's card; its intended use is quoted when it is the card of the case's model.

    Raises:
        pydantic.ValidationError: a resource came out invalid (a bug here, not a user error).
    """
    ids = _Ids(case)
    device = _device(case, card, ids)
    proportions = [_class_observation(case, key, ids) for key in CLASS_KEYS]
    call = _call_observation(case, ids)
    observations = proportions + [call]
    report = _report(case, observations, ids)
    provenances = [_model_provenance(case, observations, ids)] + _review_provenances(case, report, ids)
    entries = [report, *observations, device, *provenances]
    bundle = Bundle(
        id=ids.of("bundle"),
        type="collection",
        timestamp=case["updated_at"],
        identifier=Identifier(system=CODE_SYSTEM, value=f"case-{case['id']}-{case['status']}"),
        entry=[BundleEntry(fullUrl=ids.url(r.id), resource=r) for r in entries],
    )
    out = bundle.model_dump(mode="json", exclude_none=True)
    Bundle.model_validate(out)  # the dict we hand out must itself read back as R4B
    return out


class _Ids:
    """Stable UUIDs per case and part, and the ``urn:uuid:`` references between entries of the bundle."""

    def __init__(self, case: dict):
        self.base = f"{case['id']}/{case['accession']}"

    def of(self, part: str) -> str:
        return str(uuid.uuid5(ID_NAMESPACE, f"{self.base}/{part}"))

    @staticmethod
    def url(resource_id: str) -> str:
        return f"urn:uuid:{resource_id}"

    def ref(self, part: str, display: str | None = None) -> Reference:
        return Reference(reference=self.url(self.of(part)), display=display)


def _concept(system: str, code: str, display: str, text: str | None = None) -> CodeableConcept:
    return CodeableConcept(coding=[Coding(system=system, code=code, display=display)], text=text or display)


def _class_concept(key: str) -> CodeableConcept:
    """A class key (or ``uncertain``, or a reviewer's ``non_diagnostic``) coded, with the dataset's subtype (or what
    non-diagnostic means) in the text."""
    code = key if key in BY_KEY or key == NON_DIAGNOSTIC_KEY else UNCERTAIN_KEY
    return _concept(CLASS_SYSTEM, code, content.display_name(key), content.long_name(key))


def _subject(case: dict) -> Reference | None:
    """The patient as the laboratory gave it: a FHIR reference verbatim, any other text as the Patient's identifier
    (free text such as "MRN 554433" is not a reference); nothing when it gave none."""
    ref = case.get("patient_ref")
    if not ref:
        return None
    if SUBJECT_REFERENCE.match(ref):
        return Reference(reference=ref)
    return Reference(
        type="Patient",
        identifier=Identifier(type=CodeableConcept(text="Patient reference as entered in leukostage"), value=ref),
    )


def _user(username: str) -> Reference:
    """A user of this application by name: no Practitioner resource is invented for them."""
    return Reference(identifier=Identifier(system=USER_SYSTEM, value=username), display=username)


def _percent(fraction: float) -> Quantity:
    return Quantity(value=round(100 * fraction, 2), unit="%", system=UCUM, code="%")


def _laboratory() -> list[CodeableConcept]:
    return [_concept(OBSERVATION_CATEGORY, "laboratory", "Laboratory")]


def _obs_status(case: dict) -> str:
    """The model's numbers are preliminary until a reviewer has signed the case off; they never change after."""
    return "preliminary" if case["status"] == "open" else "final"


def _model_name(case: dict, card: dict) -> tuple[str, str]:
    model = case.get("model") or {}
    return model.get("name") or card.get("name", "unknown"), model.get("version") or card.get("version", "unknown")


def _device(case: dict, card: dict, ids: _Ids) -> Device:
    """The model that made the case's results (the case records which); the card adds its intended use."""
    name, version = _model_name(case, card)
    notes = [Annotation(text=DISCLAIMER)]
    if (card.get("name"), card.get("version")) == (name, version) and card.get("intended_use"):
        notes.insert(0, Annotation(text=card["intended_use"]))
    return Device(
        id=ids.of("device"),
        deviceName=[DeviceDeviceName(name=f"leukostage {name}", type="model-name")],
        version=[DeviceVersion(value=version)],
        type=_concept(CODE_SYSTEM, "image-classifier", "Blood smear image classifier (machine learning)"),
        note=notes,
    )


def _class_observation(case: dict, key: str, ids: _Ids) -> Observation:
    """The share of counted fields the model labelled ``key``, with the count and the mean probability."""
    summary = case["summary"]
    shares = content.class_shares(summary)
    mean = (summary.get("mean_probabilities") or {}).get(key)
    name = content.long_name(key)
    components = [
        ObservationComponent(
            code=_concept(CODE_SYSTEM, "field-count", f"Fields labelled {name}"),
            valueInteger=int((summary.get("counts") or {}).get(key) or 0),
        )
    ]
    if mean is not None:
        components.append(
            ObservationComponent(
                code=_concept(CODE_SYSTEM, "mean-probability", f"Mean probability of {name} over the counted fields"),
                valueQuantity=_percent(float(mean)),
            )
        )
    value = (
        {"valueQuantity": _percent(shares[key])}
        if shares
        else {
            "dataAbsentReason": CodeableConcept(
                coding=[Coding(system=DATA_ABSENT, code="not-applicable", display="Not Applicable")],
                text="no field of this case could be counted",
            )
        }
    )
    return Observation(
        id=ids.of(f"proportion/{key}"),
        meta=Meta(security=[AI_ASSERTED]),
        status=_obs_status(case),
        category=_laboratory(),
        code=_concept(CODE_SYSTEM, f"proportion-{key}", f"Share of counted fields classified as {name}"),
        subject=_subject(case),
        effectiveDateTime=case["created_at"],
        issued=case["updated_at"],
        device=ids.ref("device"),
        component=components,
        **value,
    )


def _call_observation(case: dict, ids: _Ids) -> Observation:
    """The model's call for the whole case and the rule that made it."""
    summary = case["summary"]
    counts = [
        ("counted-fields", "Fields that entered the call", summary.get("counted") or 0),
        ("uncertain-fields", "Fields the model was uncertain about", content.uncertain_total(summary)),
        ("refused-fields", "Fields refused by the input check", content.refused_total(summary)),
    ]
    return Observation(
        id=ids.of("case-call"),
        meta=Meta(security=[AI_ASSERTED]),
        status=_obs_status(case),
        category=_laboratory(),
        code=_concept(CODE_SYSTEM, "case-call", "Model's case-level call over all fields"),
        subject=_subject(case),
        effectiveDateTime=case["created_at"],
        issued=case["updated_at"],
        device=ids.ref("device"),
        valueCodeableConcept=_class_concept(summary["case_call"]),
        method=CodeableConcept(text=summary.get("case_rule") or "not stated"),
        component=[
            ObservationComponent(code=_concept(CODE_SYSTEM, code, text), valueInteger=int(n))
            for code, text, n in counts
        ],
        note=[Annotation(text=DISCLAIMER)],
    )


def _conclusion(case: dict) -> tuple[str, str]:
    """(text, class key) of the report's conclusion: the reviewer's statement in force, else the model's call.

    After an amendment it is the amendment's call, who made it, when and why, and only its own comment: the earlier
    statements are history (the Provenance resources), never shown beside the current call.
    """
    model_call = case["summary"]["case_call"]
    now = content.current(case)
    if now is None:
        return (
            f"Preliminary, not reviewed: the model's call over {case['summary'].get('counted') or 0} counted "
            f"fields is {content.long_name(model_call)}. {DISCLAIMER}"
        ), model_call
    call = now["final_call"]
    if call == NON_DIAGNOSTIC_KEY:
        parts = [
            f"Reviewer's final call: {content.long_name(call)}: the sample cannot be called from these fields "
            f"(the model's call: {content.long_name(model_call)})."
        ]
    else:
        parts = [
            f"Reviewer's final call: {content.long_name(call)} (the model's call: {content.long_name(model_call)})."
        ]
    if now["kind"] == "amended":
        parts.append(
            f"Amended after sign-off by {now['by']}, {content.show_time(now['at'])}; "
            f"reason: \u201c{now['reason']}\u201d."
        )
    else:
        parts.append(f"Signed off by {now['by']}, {content.show_time(now['at'])}.")
    if now["comment"]:
        parts.append(f"Comment: \u201c{now['comment']}\u201d.")
    return " ".join([*parts, DISCLAIMER]), call


def _interpreters(case: dict) -> list[Reference] | None:
    """Who made the call in force, then whoever else signed or amended the case."""
    names: list[str] = []
    for statement in reversed(content.history(case)):
        if statement["by"] not in names:
            names.append(statement["by"])
    return [_user(n) for n in names] or None


def _report(case: dict, observations: list[Observation], ids: _Ids) -> DiagnosticReport:
    text, key = _conclusion(case)
    now = content.current(case)
    return DiagnosticReport(
        id=ids.of("report"),
        meta=Meta(security=[CLINICIAN_ASSERTED_FROM_AI if now else AI_ASSERTED]),
        identifier=[Identifier(type=_concept(V2_IDENTIFIER_TYPE, "ACSN", "Accession ID"), value=case["accession"])],
        status=REPORT_STATUS[case["status"]],
        category=[_concept(V2_DIAGNOSTIC_SECTION, "HM", "Hematology")],
        code=_concept(
            CODE_SYSTEM,
            "smear-image-analysis",
            "Peripheral blood smear image analysis, ALL subtype (research decision support)",
        ),
        subject=_subject(case),
        effectiveDateTime=case["created_at"],
        issued=now["at"] if now else case["updated_at"],
        resultsInterpreter=_interpreters(case),
        result=[Reference(reference=ids.url(o.id)) for o in observations],
        conclusion=text,
        conclusionCode=[_class_concept(key)],
    )


def _model_provenance(case: dict, observations: list[Observation], ids: _Ids) -> Provenance:
    """The AI transparency guide's second level: which device asserted the observations."""
    name, version = _model_name(case, {})
    return Provenance(
        id=ids.of("provenance/model"),
        meta=Meta(security=[AI_ASSERTED]),
        target=[Reference(reference=ids.url(o.id)) for o in observations],
        recorded=case["updated_at"],
        agent=[
            ProvenanceAgent(
                type=_concept(PROVENANCE_AGENT_TYPE, "author", "Author"),
                who=ids.ref("device", f"leukostage {name} {version}"),
            )
        ],
        activity=CodeableConcept(text="Classification of each field by the model, and the case call by its rule"),
    )


def _review_provenances(case: dict, report: DiagnosticReport, ids: _Ids) -> list[Provenance]:
    """One Provenance for the sign-off and one per amendment: who attested the report, when, and why it changed."""
    review = case.get("review")
    if not review:
        return []
    target = [Reference(reference=ids.url(report.id))]
    out = [
        Provenance(
            id=ids.of("provenance/sign-off"),
            target=target,
            recorded=review["signed_off_at"],
            agent=[
                ProvenanceAgent(
                    type=_concept(PROVENANCE_AGENT_TYPE, "verifier", "Verifier"), who=_user(review["reviewer"])
                )
            ],
            activity=CodeableConcept(
                text=f"Reviewed and signed off; final call {content.long_name(review['final_call'])}"
            ),
        )
    ]
    for n, amendment in enumerate(case.get("amendments") or [], start=1):
        change = f"; final call {content.long_name(amendment['final_call'])}" if amendment.get("final_call") else ""
        out.append(
            Provenance(
                id=ids.of(f"provenance/amendment/{n}"),
                target=target,
                recorded=amendment["at"],
                agent=[
                    ProvenanceAgent(
                        type=_concept(PROVENANCE_AGENT_TYPE, "verifier", "Verifier"), who=_user(amendment["by"])
                    )
                ],
                activity=CodeableConcept(text=f"Amended after sign-off{change}"),
                reason=[CodeableConcept(text=amendment["reason"])],
            )
        )
    return out
