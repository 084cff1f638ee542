"""The case API's part of the OpenAPI document (merged into ``openapi.build_spec``): the case routes (the report
routes from ``reports.FORMATS``, as the case API makes them), the case pages, the login pages, user management (API
and page), their schemas."""

from __future__ import annotations

from ..cases.models import CASE_STATUSES, ROLES
from ..classes import CLASS_KEYS, FINAL_CALLS, NON_DIAGNOSTIC_KEY, UNCERTAIN_KEY
from ..reports import FORMATS

_REF = "#/components/schemas/"
CASE_ID = {"name": "case_id", "in": "path", "required": True, "schema": {"type": "integer"}}
IMAGE_ID = {"name": "image_id", "in": "path", "required": True, "schema": {"type": "integer"}}
SECURITY = [{"bearer": []}, {"session": []}]

# Page routes of the case UI (web/cases_pages.py); every Flask rule must be documented.
_HTML = {"content": {"text/html": {}}}
CASE_PAGE_PATHS: dict[str, dict] = {
    "/cases": {
        "get": {
            "summary": "Case list (HTML page): search by accession or patient reference, filter by status.",
            "parameters": [
                {"name": n, "in": "query", "required": False, "schema": {"type": t}}
                for n, t in (("q", "string"), ("status", "string"), ("page", "integer"))
            ],
            "responses": {
                "200": {"description": "HTML page.", **_HTML},
                "302": {"description": "Not signed in: to /login."},
            },
        }
    },
    "/cases/new": {
        "get": {
            "summary": "New-case form (HTML page).",
            "responses": {"200": {"description": "HTML form.", **_HTML}, "302": {"description": "Not signed in."}},
        },
        "post": {
            "summary": "Create a case from the form (accession, patient_ref, note, csrf_token).",
            "responses": {
                "303": {"description": "Created: to the case page."},
                "400": {"description": "Invalid form (the form again, with the reason).", **_HTML},
                "409": {"description": "Accession taken (the form again).", **_HTML},
            },
        },
    },
    "/cases/{case_id}": {
        "get": {
            "summary": "Case page (HTML): fields, chart, call, reviewer's form for reviewers, downloads, audit trail.",
            "parameters": [{"name": "case_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "responses": {
                "200": {"description": "HTML page.", **_HTML},
                "302": {"description": "Not signed in."},
                "404": {"description": "No such case (HTML page).", **_HTML},
            },
        }
    },
    "/users": {
        "get": {
            "summary": "Users page (HTML, admin only): every account with forms to change role, disable or enable, "
            "reset the password, and to add a user.",
            "parameters": [{"name": "saved", "in": "query", "required": False, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "HTML page.", **_HTML},
                "302": {"description": "Not signed in."},
                "403": {"description": "Not an admin (HTML page).", **_HTML},
            },
        },
        "post": {
            "summary": "Add a user from the form (username, role, password, csrf_token).",
            "responses": {
                "303": {"description": "Created: back to the Users page."},
                "400": {"description": "Invalid form (the page again, with the reason).", **_HTML},
                "403": {"description": "Not an admin (HTML page).", **_HTML},
                "409": {"description": "The name is taken (the page again, saying so).", **_HTML},
            },
        },
    },
    "/users/{username}": {
        "post": {
            "summary": "Change one account from the page's forms: action role (with role), disable, enable, or "
            "password (with password); csrf_token.",
            "parameters": [{"name": "username", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "303": {"description": "Changed: back to the Users page."},
                "400": {"description": "Invalid change (the page again, with the reason).", **_HTML},
                "403": {"description": "Not an admin (HTML page).", **_HTML},
                "404": {"description": "No such user (HTML page).", **_HTML},
                "409": {"description": "The last active admin, or one's own account (the page again).", **_HTML},
            },
        }
    },
    "/cases/classes.css": {
        "get": {
            "summary": "Badge colours of the classes, generated from leukostage.classes.",
            "responses": {"200": {"description": "CSS.", "content": {"text/css": {}}}},
        }
    },
}


def _json(schema: str | dict, description: str) -> dict:
    s = {"$ref": _REF + schema} if isinstance(schema, str) else schema
    return {"description": description, "content": {"application/json": {"schema": s}}}


def _err(description: str) -> dict:
    return _json("Error", description)


def _op(
    summary: str,
    responses: dict,
    *,
    params: tuple = (CASE_ID,),
    body: dict | None = None,
    statuses: tuple = ("401", "404"),
) -> dict:
    common = {
        "401": _err("`unauthorized`: no valid session or bearer token."),
        "403": _err("`forbidden`: the user's role may not do this."),
        "404": _err("`unknown_case` (or `unknown_image`: not a field of this case)."),
        "400": _err(
            "`csrf_failed` (a cookie-authenticated write without the CSRF token), `bad_json`, "
            "`missing_field`, `invalid_field`, `bad_class`."
        ),
    }
    op = {
        "summary": summary,
        "security": SECURITY,
        "parameters": list(params),
        "responses": {**responses, **{s: common[s] for s in statuses}},
    }
    if body is not None:
        op["requestBody"] = body
    return op


def _body(properties: dict, required: list[str]) -> dict:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "required": required, "properties": properties}}},
    }


def case_schemas() -> dict:
    classes = {"enum": list(CLASS_KEYS)}
    calls = {"enum": list(FINAL_CALLS)}
    probabilities = {"type": ["object", "null"], "properties": {k: {"type": "number"} for k in CLASS_KEYS}}
    statement = {
        "type": "object",
        "description": "One reviewer statement: `final_call` is the call in force after it.",
        "properties": {
            "kind": {"enum": ["signed_off", "amended"]},
            "final_call": calls,
            "by": {"type": "string"},
            "at": {"type": "string"},
            "comment": {"type": ["string", "null"]},
            "reason": {"type": ["string", "null"], "description": "Why it was amended (null for the sign-off)."},
            "changed_call": {"type": "boolean"},
        },
    }
    return {
        "Case": {
            "type": "object",
            "description": "The case dict (CASE_SCHEMA.md).",
            "required": ["id", "accession", "status", "images", "summary", "final_call", "review", "amendments"],
            "properties": {
                "id": {"type": "integer"},
                "accession": {"type": "string"},
                "patient_ref": {"type": ["string", "null"]},
                "note": {"type": ["string", "null"]},
                "status": {"enum": list(CASE_STATUSES)},
                "created_at": {"type": "string"},
                "created_by": {"type": "string"},
                "updated_at": {"type": "string"},
                "model": {"$ref": _REF + "ModelInfo"},
                "images": {
                    "type": "array",
                    "description": "The fields in the case (removed ones are in `removed_images`).",
                    "items": {"$ref": _REF + "CaseImage"},
                },
                "removed_images": {
                    "type": "array",
                    "description": "Fields removed before sign-off: never counted; kept for the audit trail.",
                    "items": {"$ref": _REF + "CaseImage"},
                },
                "summary": {"$ref": _REF + "CaseSummary"},
                "final_call": {
                    "enum": [*FINAL_CALLS, None],
                    "description": "The reviewer's call in force: null before sign-off, the amended call after an "
                    f"amendment that set one; `{NON_DIAGNOSTIC_KEY}`: the sample cannot be called from its fields.",
                },
                "decision": {
                    "oneOf": [statement, {"type": "null"}],
                    "description": "The statement in force (the latest): its call, who made it, when, why, comment.",
                },
                "history": {"type": "array", "items": statement, "description": "Every statement, oldest first."},
                "review": {
                    "type": ["object", "null"],
                    "properties": {
                        "final_call": calls,
                        "comment": {"type": "string"},
                        "reviewer": {"type": "string"},
                        "signed_off_at": {"type": "string"},
                    },
                },
                "amendments": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "reason": {"type": "string"},
                            "by": {"type": "string"},
                            "at": {"type": "string"},
                            "final_call": {"type": ["string", "null"]},
                            "comment": {"type": ["string", "null"]},
                        },
                    },
                },
            },
        },
        "CaseImage": {
            "type": "object",
            "properties": {
                "image_id": {"type": "integer"},
                "sha256": {"type": "string"},
                "filename": {"type": "string", "description": "The client's file name (metadata only)."},
                "uploaded_at": {"type": "string"},
                "uploaded_by": {"type": "string"},
                "width": {"type": ["integer", "null"]},
                "height": {"type": ["integer", "null"]},
                "result": {"oneOf": [{"$ref": _REF + "Prediction"}, {"$ref": _REF + "Rejection"}]},
                "override": {
                    "type": ["object", "null"],
                    "properties": {"label": classes, "by": {"type": "string"}, "at": {"type": "string"}},
                },
                "duplicate_of": {
                    "type": ["integer", "null"],
                    "description": "The earlier field with the same bytes (counted once); null for an original.",
                },
                "counted": {"type": "boolean", "description": "Whether the field enters the case call."},
                "removed": {
                    "type": "object",
                    "description": "Only in `removed_images`: who removed the field, when and why.",
                    "properties": {"reason": {"type": "string"}, "by": {"type": "string"}, "at": {"type": "string"}},
                },
            },
        },
        "CaseSummary": {
            "type": "object",
            "properties": {
                "counts": {"type": "object", "description": "Fields per class; uncertain by reason; refused by code."},
                "counted": {"type": "integer", "description": "Fields that entered the call."},
                "mean_probabilities": probabilities,
                "case_call": {"enum": [*CLASS_KEYS, UNCERTAIN_KEY]},
                "case_rule": {"type": "string", "description": "One sentence: how the call was made."},
            },
        },
        "CaseList": {
            "type": "object",
            "properties": {
                "cases": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "integer"},
                            "accession": {"type": "string"},
                            "patient_ref": {"type": ["string", "null"]},
                            "status": {"enum": list(CASE_STATUSES)},
                            "images": {"type": "integer", "description": "Fields in the case (each photo once)."},
                            "counted": {"type": "integer"},
                            "case_call": {"enum": [*CLASS_KEYS, UNCERTAIN_KEY], "description": "The model's call."},
                            "final_call": {"enum": [*FINAL_CALLS, None], "description": "The reviewer's, in force."},
                            "final_call_by": {"type": ["string", "null"], "description": "Who made the call in force."},
                            "final_call_at": {"type": ["string", "null"]},
                            "signed_off_by": {"type": ["string", "null"]},
                        },
                    },
                },
                "page": {"type": "integer"},
                "per_page": {"type": "integer"},
                "total": {"type": "integer"},
            },
        },
        "AuditTrail": {
            "type": "object",
            "properties": {
                "case_id": {"type": "integer"},
                "events": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "integer"},
                            "at": {"type": "string"},
                            "user": {"type": ["string", "null"]},
                            "action": {
                                "enum": [
                                    "created",
                                    "image_added",
                                    "duplicate_upload",
                                    "image_removed",
                                    "viewed",
                                    "exported",
                                    "overridden",
                                    "signed_off",
                                    "amended",
                                    "exported_for_adaptation",
                                ]
                            },
                            "detail": {"type": "object"},
                        },
                    },
                },
            },
        },
        "User": {
            "type": "object",
            "properties": {
                "username": {"type": "string"},
                "role": {"enum": list(ROLES)},
                "disabled": {"type": "boolean"},
                "created_at": {"type": "string"},
            },
        },
    }


def case_paths() -> dict:
    override = {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["image_id", "label"],
            "properties": {
                "image_id": {"type": "integer"},
                "label": {"type": "string", "description": f"A class key ({', '.join(CLASS_KEYS)}) or display name."},
            },
        },
    }
    final_call = {
        "type": "string",
        "description": f"One of {', '.join(FINAL_CALLS)} (any case), or a display name such as `Mid Stage` or "
        f"`Non-diagnostic`. `{NON_DIAGNOSTIC_KEY}`: the sample cannot be called (insufficient or unusable fields).",
    }
    case_json = _json("Case", "The case.")
    upload = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}
                    },
                }
            }
        },
    }
    return {
        **CASE_PAGE_PATHS,
        "/login": {
            "get": {
                "summary": "The sign-in page.",
                "responses": {"200": {"description": "HTML form.", "content": {"text/html": {}}}},
            },
            "post": {
                "summary": "Sign in (form fields username, password, csrf_token, next); failed sign-ins are limited "
                "per account and per client address (counted in the database, shared by every node).",
                "responses": {
                    "302": {"description": "Signed in: to `next`."},
                    "400": _err("`csrf_failed`."),
                    "401": {
                        "description": "Wrong user name or password (the form again).",
                        "content": {"text/html": {}},
                    },
                    "429": {
                        "description": "Too many failed sign-ins for the account or from the address (the form "
                        "again, saying how long to wait; `Retry-After` in seconds). The password is not checked.",
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                        "content": {"text/html": {}},
                    },
                },
            },
        },
        "/logout": {
            "post": {
                "summary": "Sign out (CSRF token needed with a session).",
                "responses": {"302": {"description": "To the sign-in page."}, "400": _err("`csrf_failed`.")},
            }
        },
        "/api/v1/cases": {
            "get": _op(
                "Cases, newest first, paginated; filter by status, search accession and patient reference.",
                {"200": _json("CaseList", "A page of cases.")},
                statuses=("400", "401"),
                params=(
                    {"name": "status", "in": "query", "schema": {"enum": list(CASE_STATUSES)}},
                    {"name": "q", "in": "query", "schema": {"type": "string"}},
                    {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                    {"name": "per_page", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                ),
            ),
            "post": _op(
                "Create a case.",
                {"201": _json("Case", "The new case."), "409": _err("`duplicate_accession`.")},
                params=(),
                statuses=("400", "401", "403"),
                body=_body(
                    {"accession": {"type": "string"}, "patient_ref": {"type": "string"}, "note": {"type": "string"}},
                    ["accession"],
                ),
            ),
        },
        "/api/v1/cases/export.csv": {
            "get": _op(
                "The worklist as CSV: every case matching `status` and `q` (no paging), the model's call beside the "
                "reviewer's final call, who made it and when; recorded as an audit event.",
                {"200": {"description": "CSV, one row per case.", "content": {"text/csv": {}}}},
                statuses=("400", "401"),
                params=(
                    {"name": "status", "in": "query", "schema": {"enum": list(CASE_STATUSES)}},
                    {"name": "q", "in": "query", "schema": {"type": "string"}},
                ),
            )
        },
        "/api/v1/cases/{case_id}": {
            "get": _op("The case, with its fields, summary and call (recorded as viewed).", {"200": case_json})
        },
        "/api/v1/cases/{case_id}/images": {
            "post": _op(
                "Upload fields (multipart `files`) under /api/v1/predict's rules: each is analysed like "
                "/api/v1/predict and stored, one transaction per field; a readable image the input check refuses is "
                "stored with its code but never counted. An empty file, one over the per-file limit, not an image or "
                "over the pixel limit, and every file after the request's time budget is spent (`over_time_budget`), "
                "is an entry with `valid: false` and its code, and is not stored. The same bytes again add no field: "
                "the entry is the existing field's, with `duplicate_of`.",
                {
                    "201": {
                        "description": "One entry per file, in order: a stored field has `image_id` and `duplicate_of` "
                        "(the existing field's `image_id` when the same photo is in the case already, else null); a "
                        "file not stored has neither.",
                        "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}},
                    },
                    "409": _err("`case_signed_off`: no fields can be added after sign-off."),
                    "413": _err("`too_large`."),
                },
                body=upload,
                statuses=("400", "401", "403", "404"),
            )
        },
        "/api/v1/cases/{case_id}/images/{image_id}": {
            "get": _op(
                "The stored bytes of one field (a removed one too: its bytes are kept); recorded as viewed.",
                {"200": {"description": "The image.", "content": {"image/*": {}}}, "410": _err("`image_missing`.")},
                params=(CASE_ID, IMAGE_ID),
            ),
            "delete": _op(
                "Remove a field from an open case (a mistaken upload), with a reason; it no longer counts, its row "
                "and stored bytes are kept, and the removal is an audit event.",
                {
                    "204": {"description": "Removed."},
                    "409": _err("`case_signed_off` (amend instead), or `image_removed` (removed already)."),
                },
                params=(CASE_ID, IMAGE_ID),
                body=_body({"reason": {"type": "string"}}, ["reason"]),
                statuses=("400", "401", "403", "404"),
            ),
        },
        "/api/v1/cases/{case_id}/images/{image_id}/overlay.png": {
            "get": _op(
                "The Grad-CAM overlay of one field (not a segmentation, not diagnostic; recorded as viewed).",
                {
                    "200": {"description": "PNG.", "content": {"image/png": {}}},
                    "422": _err("`no_overlay`."),
                    "410": _err("`image_missing`."),
                },
                params=(CASE_ID, IMAGE_ID),
            )
        },
        "/api/v1/cases/{case_id}/review": {
            "post": _op(
                "Sign the case off (reviewer): the reviewer's own final call (required; nothing is taken over from "
                "the model), comment (required for `non_diagnostic`), per-field overrides beside the model's results.",
                {"200": case_json, "409": _err("`already_signed_off`: amend instead.")},
                body=_body(
                    {
                        "final_call": final_call,
                        "comment": {"type": "string"},
                        "image_overrides": override,
                    },
                    ["final_call"],
                ),
                statuses=("400", "401", "403", "404"),
            )
        },
        "/api/v1/cases/{case_id}/amend": {
            "post": _op(
                "Amend a signed-off case (reviewer) with a reason; the status becomes `amended` and the amendment is "
                "the case's statement in force (`final_call`, `decision`).",
                {"200": case_json, "409": _err("`not_signed_off`: review instead.")},
                body=_body(
                    {
                        "reason": {"type": "string"},
                        "final_call": final_call,
                        "comment": {"type": "string"},
                        "image_overrides": override,
                    },
                    ["reason"],
                ),
                statuses=("400", "401", "403", "404"),
            )
        },
        "/api/v1/cases/{case_id}/audit": {
            "get": _op(
                "Every event on the case, oldest first (append-only); this reading is then recorded as viewed.",
                {"200": _json("AuditTrail", "The events.")},
            )
        },
        **report_paths(),
        **user_paths(),
    }


def user_paths() -> dict:
    """``/api/v1/users``: admin only (403 for other roles), every change an audit event."""
    username = {"name": "username", "in": "path", "required": True, "schema": {"type": "string"}}
    user_json = _json("User", "The account.")
    return {
        "/api/v1/users": {
            "get": _op(
                "Every account (admin only).",
                {"200": _json({"type": "object", "properties": {"users": {"type": "array"}}}, "The accounts.")},
                params=(),
                statuses=("401", "403"),
            ),
            "post": _op(
                "Create an account (admin only); an API token for it: `leukostage users token NAME`.",
                {"201": user_json, "409": _err("`user_exists`: the name is taken (change that account instead).")},
                params=(),
                body=_body(
                    {"username": {"type": "string"}, "role": {"enum": list(ROLES)}, "password": {"type": "string"}},
                    ["username", "role", "password"],
                ),
                statuses=("400", "401", "403"),
            ),
        },
        "/api/v1/users/{username}": {
            "patch": _op(
                "Change an account (admin only): any of role, disabled (a disabled account's sign-ins and tokens "
                "are refused), password.",
                {
                    "200": user_json,
                    "404": _err("`unknown_user`."),
                    "409": _err("`last_admin` (the last active admin), `own_account` (disabling oneself)."),
                },
                params=(username,),
                body={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "minProperties": 1,
                                "properties": {
                                    "role": {"enum": list(ROLES)},
                                    "disabled": {"type": "boolean"},
                                    "password": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                statuses=("400", "401", "403"),
            )
        },
    }


def report_paths() -> dict:
    """One route per format of ``reports.FORMATS`` (the case API makes its routes from the same list)."""
    return {
        f"/api/v1/cases/{{case_id}}/{fmt.path}": {
            "get": _op(
                fmt.summary,
                {
                    "200": {"description": f"{fmt.label}.", "content": {fmt.media_type: {}}},
                    "501": _err("`reports_unavailable`."),
                },
            )
        }
        for fmt in FORMATS.values()
    }


def security_schemes() -> dict:
    return {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "`leukostage users token NAME`; roles: " + ", ".join(ROLES) + ".",
        },
        "session": {
            "type": "apiKey",
            "in": "cookie",
            "name": "session",
            "description": "Signed in at /login; writes need the X-CSRFToken header.",
        },
    }
