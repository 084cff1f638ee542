"""The case API: thin views over :mod:`leukostage.cases.service` (as ``api.py`` is over ``analyse_bytes``).

Every route needs a signed-in user or a bearer token (401), a role where it changes a case (403), a case that exists
(404); writes that the case's state forbids are 409. Errors are the API's JSON ``{"error": {"code", "message"}}``.
Uploads follow ``/api/v1/predict``'s rules (the per-file limit, empty files, the request's time budget) and run the
same ``predict.analyse_bytes``; a file that is not an image this app can keep gets an entry with its code and is not
stored; each stored field is one transaction. Reading a field, its heat map or the audit trail is recorded as
``viewed``. The report routes are made from ``reports.FORMATS``, one per format.
"""

from __future__ import annotations

import base64

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask_login import current_user, login_required

from ..cases import service
from ..imaging import media_type
from ..reports import FORMATS, ReportInputs
from .auth import protect_writes
from .context import can_explain, predictor, store, transaction
from .responses import ApiError
from .uploads import NOT_AN_IMAGE_CODES, Upload, uploads

bp = Blueprint("cases_api", __name__)
bp.before_request(protect_writes)


def _json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "Send a JSON object with Content-Type: application/json.")
    return body


def _int_arg(name: str, default: int) -> int:
    value = request.args.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"'{name}' must be an integer") from None


@bp.get("/api/v1/cases")
@login_required
def list_cases():
    with transaction() as s:
        return jsonify(
            service.list_cases(
                s,
                request.args.get("status") or None,
                request.args.get("q") or None,
                _int_arg("page", 1),
                _int_arg("per_page", service.PER_PAGE_DEFAULT),
            )
        )


@bp.get("/api/v1/cases/export.csv")
@login_required
def export_worklist():
    """The worklist as CSV: every case matching ``status`` and ``q`` (no paging), the model's call beside the
    reviewer's final call and who made it; recorded as an audit event."""
    from ..reports.csv import worklist_csv

    with transaction() as s:
        items = service.export_worklist(
            s, current_user, request.args.get("status") or None, request.args.get("q") or None
        )
    return Response(
        worklist_csv(items),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="cases.csv"'},
    )


@bp.post("/api/v1/cases")
@login_required
def create_case():
    with transaction() as s:
        case = service.create_case(s, current_user, _json_body(), predictor().info)
        case_id = case.id
    with transaction() as s:
        return jsonify(service.case_dict(s, case_id)), 201


@bp.get("/api/v1/cases/<int:case_id>")
@login_required
def get_case(case_id: int):
    with transaction() as s:
        return jsonify(service.view_case(s, current_user, case_id))


def _analyse(upload: Upload) -> tuple[service.Field | None, dict]:
    """The field for the service, or None and the entry that says why the file is not stored: refused before
    analysis (empty, over the per-file limit), the request's time budget spent, or not an image this app can read
    and keep (``uploads.NOT_AN_IMAGE_CODES``)."""
    refused = upload.refused_entry()
    if refused is not None:
        return None, refused
    if g.work.spent():
        return None, upload.entry(
            "over_time_budget", g.work.over_time_message() + " This file was not analysed or stored: send it again."
        )
    analysis = upload.analyse()
    if analysis.result.get("code") in NOT_AN_IMAGE_CODES:
        return None, {**analysis.result, "timing_ms": analysis.timing_ms}
    h, w = analysis.rgb.shape[:2] if analysis.rgb is not None else (None, None)
    return service.Field(upload.name, upload.data, analysis.result, w, h), {"timing_ms": analysis.timing_ms}


@bp.post("/api/v1/cases/<int:case_id>/images")
@login_required
def add_images(case_id: int):
    """Analyse and store each file of the multipart field ``files``, one transaction per file; 201 with the list
    (an entry per file in order: a stored field has ``image_id``, a file not stored has ``valid`` false and a code)."""
    files = uploads("files")
    limit = current_app.config["MAX_FILES"]
    with transaction() as s:
        service.require_role(current_user, service.UPLOAD_ROLES, "add fields")
        service.ensure_open(s, case_id)  # 404 / 409 before any analysis
    if not files:
        raise ApiError(
            400,
            "no_file",
            "No file in the request: send the fields as multipart/form-data in the field "
            "'files' (JPEG, PNG, TIFF or BMP).",
        )
    if len(files) > limit:
        raise ApiError(400, "too_many_files", f"{len(files)} files were sent; at most {limit} per request.")
    out = []
    for upload in files:
        field, answer = _analyse(upload)
        if field is None:
            out.append(answer)
            continue
        with transaction() as s:
            entry = service.add_image(s, current_user, case_id, field, store(), predictor().info)
        out.append({**entry, **answer})
    return jsonify(out), 201


@bp.delete("/api/v1/cases/<int:case_id>/images/<int:image_id>")
@login_required
def remove_image(case_id: int, image_id: int):
    """Take a field out of an open case, with ``{"reason"}``: 204. Its row and stored bytes are kept (audit trail);
    409 once the case is signed off."""
    service.require_role(current_user, service.UPLOAD_ROLES, "remove fields")
    body = request.get_json(silent=True)
    with transaction() as s:
        service.remove_image(s, current_user, case_id, image_id, body)
    return Response(status=204)


def _reviewer_change(case_id: int, change, action: str):
    """Sign-off and amendment: the role is checked before the body is read (a technician gets 403, whatever it
    sent), the change is committed, and the case is answered as it now stands."""
    service.require_role(current_user, service.REVIEW_ROLES, action)
    with transaction() as s:
        change(s, current_user, case_id, _json_body())
    with transaction() as s:
        return jsonify(service.case_dict(s, case_id))


@bp.post("/api/v1/cases/<int:case_id>/review")
@login_required
def review(case_id: int):
    return _reviewer_change(case_id, service.sign_off, "sign cases off")


@bp.post("/api/v1/cases/<int:case_id>/amend")
@login_required
def amend(case_id: int):
    return _reviewer_change(case_id, service.amend, "amend cases")


@bp.get("/api/v1/cases/<int:case_id>/audit")
@login_required
def audit(case_id: int):
    """Every event of the case, oldest first (this reading is recorded as ``viewed``, after them)."""
    with transaction() as s:
        return jsonify({"case_id": case_id, "events": service.view_audit(s, current_user, case_id)})


@bp.get("/api/v1/cases/<int:case_id>/images/<int:image_id>")
@login_required
def image_file(case_id: int, image_id: int):
    """The stored bytes of one field (404 for an image of another case), recorded as ``viewed``."""
    with transaction() as s:
        sha256 = service.image_of_case(s, case_id, image_id).sha256
    data = _read(sha256)  # the store may open its own transaction
    with transaction() as s:
        service.record_view(s, current_user, case_id, image_id, "image")
    return Response(data, mimetype=media_type(data), headers={"Content-Disposition": "inline"})


@bp.get("/api/v1/cases/<int:case_id>/images/<int:image_id>/overlay.png")
@login_required
def image_overlay(case_id: int, image_id: int):
    """The Grad-CAM overlay of one field (computed on request; 422 for a refused field), recorded as ``viewed``."""
    with transaction() as s:
        sha256 = service.image_of_case(s, case_id, image_id).sha256
    png = overlay_png(_read(sha256))  # outside the transaction: Grad-CAM takes a while, and holds no lock
    if png is None:
        raise ApiError(
            422,
            "no_overlay",
            "This field was refused by the input check, or the model has no Grad-CAM "
            "outputs: there is no heat map for it.",
        )
    with transaction() as s:
        service.record_view(s, current_user, case_id, image_id, "overlay")
    return Response(png, mimetype="image/png")


def _read(sha256: str) -> bytes:
    try:
        return store().read(sha256)
    except FileNotFoundError:
        raise ApiError(
            410, "image_missing", "The stored file of this field is missing; run `leukostage db check` on the server."
        ) from None


def overlay_png(data: bytes) -> bytes | None:
    """Grad-CAM overlay PNG for an image's bytes, or None when it is refused or the model cannot explain."""
    from ..explain import explain_rgb
    from ..predict import analyse_bytes

    if not can_explain():
        return None
    analysis = analyse_bytes(data, "field", predictor(), current_app.config["VALIDATION_PRESET"], all_outputs=True)
    if not analysis.result.get("valid"):
        return None
    exp = explain_rgb(predictor(), analysis.view, outputs=analysis.outputs)
    return base64.b64decode(exp["overlay_png_base64"])


@login_required
def report(case_id: int, name: str):
    """The case in one of ``reports.FORMATS`` (routed once per format, below), recorded as exported."""
    fmt = FORMATS[name]
    try:
        render = fmt.renderer()
    except ImportError as exc:
        raise ApiError(
            501, "reports_unavailable", f"The {fmt.name} report is not available in this build ({exc})."
        ) from None
    with transaction() as s:
        case = service.export_case(s, current_user, case_id, fmt.name)
    body = render(case, ReportInputs(predictor().card, store().read, overlay_png))
    headers = {"Content-Disposition": f'attachment; filename="{fmt.filename(case_id)}"'} if fmt.attachment else {}
    return Response(body, mimetype=fmt.media_type, headers=headers)


for _fmt in FORMATS.values():
    bp.add_url_rule(
        f"/api/v1/cases/<int:case_id>/{_fmt.path}", "report", report, methods=["GET"], defaults={"name": _fmt.name}
    )
