"""The laboratory's pages: the worklist with search, new case, the case view (fields, chart, the call in force with
its history, review, downloads, audit trail), and the badge style sheet. Thin views over
:mod:`leukostage.cases.service`, as the API is.

Server-rendered so the list, the case and its audit trail read without script; ``cases.js`` adds what needs it
(many uploads with a progress bar each, the Original / Heat-map toggle, a field opened large with its heat map and
result, removing a field, the reviewer's form), talking to the case API with the page's CSRF token. The reviewer's
controls are rendered only for users who may review: a technician's page does not contain them at all (and the API
refuses them with 403 anyway). The sign-off form pre-selects nothing: the reviewer states the call.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from ..cases import service
from ..classes import (
    CLASSES,
    NON_DIAGNOSTIC_DISPLAY_NAME,
    NON_DIAGNOSTIC_KEY,
    NON_DIAGNOSTIC_MEANING,
    NOT_EVIDENCE_LABEL,
    UNCERTAIN_KEY,
    text_colour,
)
from ..imaging import mebibytes
from ..outcomes import uncertain_reason_text
from ..reports import FORMATS, content
from .auth import protect_writes
from .context import can_explain, predictor, transaction
from .frame import ACCEPT, chrome, page_config

bp = Blueprint("cases_pages", __name__)
bp.before_request(protect_writes)

STATUS_FILTERS = (("", "Any status"), ("open", "Open"), ("signed_off", "Signed off"), ("amended", "Amended"))
PER_PAGE = 25


@bp.errorhandler(service.ServiceError)
def _page_error(exc: service.ServiceError):
    """Errors on a page are pages, not JSON."""
    return render_template("cases/error.html", status=exc.status, message=exc.message, **_chrome()), exc.status


def _chrome() -> dict:
    return chrome()


def _badge(key: str) -> dict:
    """A badge's label key and text (class, uncertain, or refused): colours come from classes.css."""
    return {"key": key, "text": "Refused" if key == content.REFUSED else content.display_name(key)}


@bp.get("/cases/classes.css")
def class_styles():
    """One rule per badge, from classes.py (the one source of colours), so the CSP can forbid inline styles."""
    keys = [c.key for c in CLASSES] + [UNCERTAIN_KEY, content.REFUSED, NON_DIAGNOSTIC_KEY]
    colours = [(key, content.colour(key)) for key in keys]
    rules = [
        f'[data-label="{key}"].badge {{ background-color: {colour}; color: {text_colour(colour)}; }}\n'
        f'[data-label="{key}"] .swatch, .swatch[data-label="{key}"] {{ background-color: {colour}; }}'
        for key, colour in colours
    ]
    return Response("\n".join(rules) + "\n", mimetype="text/css")


@bp.get("/cases")
@login_required
def case_list():
    q = request.args.get("q", "").strip()[:100]
    status = request.args.get("status", "")
    status = status if status in dict(STATUS_FILTERS) else ""
    page = request.args.get("page", "1")
    page = int(page) if page.isdigit() and int(page) > 0 else 1
    with transaction() as s:
        listing = service.list_cases(s, status or None, q or None, page, PER_PAGE)
    pages = max(1, -(-listing["total"] // PER_PAGE))
    return render_template(
        "cases/list.html",
        listing=listing,
        q=q,
        status=status,
        filters=STATUS_FILTERS,
        page=page,
        pages=pages,
        badge=_badge,
        statuses=content.STATUS_NAMES,
        show_time=content.show_time,
        **_chrome(),
    )


@bp.get("/cases/new")
@login_required
def new_case_form():
    return render_template("cases/new.html", form={}, error=None, **_chrome())


@bp.post("/cases/new")
@login_required
def new_case():
    form = {k: request.form.get(k, "").strip() for k in ("accession", "patient_ref", "note")}
    body = {k: v for k, v in form.items() if v}
    try:
        with transaction() as s:
            case_id = service.create_case(s, current_user, body, predictor().info).id
    except service.ServiceError as exc:
        return render_template("cases/new.html", form=form, error=exc.message, **_chrome()), exc.status
    return redirect(url_for("cases_pages.case_view", case_id=case_id), 303)


@bp.get("/cases/<int:case_id>")
@login_required
def case_view(case_id: int):
    with transaction() as s:
        case = service.view_case(s, current_user, case_id)
        events = service.audit_events(s, case_id)
    return render_template(
        "cases/case.html",
        case=case,
        events=events,
        chart=chart_rows(case),
        badge=_badge,
        content=content,
        decision=case["decision"],
        history=case["history"],
        call_options=call_options(case),
        can_review=current_user.can_review,
        can_upload=case["status"] == "open",
        explain=can_explain(),
        reports=FORMATS.values(),
        classes=CLASSES,
        not_evidence=NOT_EVIDENCE_LABEL,
        uncertain_text=uncertain_reason_text,
        accept=ACCEPT,
        max_size=mebibytes(current_app.config["MAX_FILE_BYTES"]),
        statuses=content.STATUS_NAMES,
        show_time=content.show_time,
        page_config={**page_config(), "case_id": case_id, "max_files": current_app.config["MAX_FILES"]},
        **_chrome(),
    )


def call_options(case: dict) -> list[dict]:
    """The sign-off form's choices, none pre-selected: the four classes, and Non-diagnostic, offered first when no
    field of the case could be counted (else last)."""
    options = [{"key": c.key, "text": f"{c.display_name} \u2013 {c.dataset_label}"} for c in CLASSES]
    non_diagnostic = {
        "key": NON_DIAGNOSTIC_KEY,
        "text": f"{NON_DIAGNOSTIC_DISPLAY_NAME} \u2013 {NON_DIAGNOSTIC_MEANING}",
    }
    return [non_diagnostic, *options] if not case["summary"]["counted"] else [*options, non_diagnostic]


def chart_rows(case: dict) -> list[dict]:
    """Per class: the share of counted fields labelled with it and the mean probability, in percent (the SVG bars
    of the page take these as widths: attributes, which the CSP allows, unlike inline styles)."""
    shares = content.class_shares(case["summary"]) or {}
    means = case["summary"].get("mean_probabilities") or {}
    return [
        {
            "key": c.key,
            "name": c.display_name,
            "subtype": c.dataset_label,
            "colour": c.colour,
            "share": round(100 * shares.get(c.key, 0.0), 1),
            "mean": round(100 * float(means[c.key]), 1) if c.key in means else None,
        }
        for c in CLASSES
    ]
