"""A case as CSV: one row per field, the model's result beside any reviewer override, and on every row the case's
calls (the model's, and the reviewer's final call in force with who made it and when), for spreadsheets and LIMS.
Probabilities are ``probabilities_<class>`` columns, as in batch tables (``classes.probability_column``). The
worklist (``GET /api/v1/cases/export.csv``) is one row per case with the same calls (:func:`worklist_csv`).

Text a client chose (file names) is neutralised against spreadsheet formula injection: a cell that would start with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading apostrophe.
"""

from __future__ import annotations

import csv
import io

from ..classes import CLASS_KEYS, probability_column
from . import ReportInputs, content

COLUMNS = (
    "accession",
    "image_id",
    "filename",
    "sha256",
    "uploaded_at",
    "uploaded_by",
    "width",
    "height",
    "valid",
    "model_label",
    "display_label",
    "dataset_label",
    "confidence",
    "top_class",
    *(probability_column(k) for k in CLASS_KEYS),
    "uncertain_reason",
    "domain_score",
    "in_domain",
    "refused_code",
    "refused_reason",
    "override_label",
    "override_by",
    "override_at",
    "final_field_label",
    "counted",
    "duplicate_of",
    "case_call",
    "final_call",
    "final_call_by",
    "final_call_at",
)
WORKLIST_COLUMNS = (
    "id",
    "accession",
    "patient_ref",
    "status",
    "created_at",
    "created_by",
    "updated_at",
    "fields",
    "counted",
    "case_call",
    "final_call",
    "final_call_by",
    "final_call_at",
    "signed_off_by",
)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def render(case: dict, inputs: ReportInputs) -> str:
    """The ``csv`` format of the registry (see :data:`leukostage.reports.FORMATS`)."""
    return case_csv(case)


def case_csv(case: dict) -> str:
    """The case's fields as CSV text (header + one row per field, in upload order; removed fields left out)."""
    return _table(COLUMNS, (field_row(case, image) for image in case.get("images") or []))


def worklist_csv(items: list[dict]) -> str:
    """The worklist as CSV text: one row per case of ``cases.service.list_cases``."""
    return _table(WORKLIST_COLUMNS, ({**item, "fields": item.get("images")} for item in items))


def _table(columns: tuple[str, ...], rows) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return out.getvalue()


def field_row(case: dict, image: dict) -> dict:
    """One field's row, as plain values (None for what does not apply)."""
    result = image.get("result") or {}
    probabilities = result.get("probabilities") or {}
    domain = result.get("domain") or {}
    override = image.get("override") or {}
    now = content.current(case) or {}
    return {
        "accession": case["accession"],
        "image_id": image["image_id"],
        "filename": image.get("filename"),
        "sha256": image.get("sha256"),
        "uploaded_at": image.get("uploaded_at"),
        "uploaded_by": image.get("uploaded_by"),
        "width": image.get("width"),
        "height": image.get("height"),
        "valid": bool(result.get("valid")),
        "model_label": content.model_label(image),
        "display_label": result.get("display_label"),
        "dataset_label": result.get("dataset_label"),
        "confidence": result.get("confidence"),
        "top_class": result.get("top_class"),
        **{probability_column(k): probabilities.get(k) for k in CLASS_KEYS},
        "uncertain_reason": content.uncertain_reason(image),
        "domain_score": domain.get("score"),
        "in_domain": domain.get("in_domain"),
        "refused_code": None if result.get("valid") else result.get("code"),
        "refused_reason": None if result.get("valid") else result.get("reason"),
        "override_label": override.get("label"),
        "override_by": override.get("by"),
        "override_at": override.get("at"),
        "final_field_label": content.shown_label(image),
        "counted": image.get("counted"),
        "duplicate_of": image.get("duplicate_of"),
        "case_call": case["summary"]["case_call"],
        "final_call": now.get("final_call"),
        "final_call_by": now.get("by"),
        "final_call_at": now.get("at"),
    }


def _cell(value):
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return "" if value is None else value
