"""The HTTP API: thin views over :func:`leukostage.predict.analyse_bytes`, the function the CLI uses too.

``POST /predict`` answers one image with the object ``leukostage predict --json`` prints for it, plus ``model`` and
``timing_ms``; a rejected image becomes an error status (see ``responses.STATUS_BY_CODE``). ``POST /api/v1/predict``
answers many images with a list, rejected ones included as ``valid: false`` entries.

Both take ``?explain=1`` (also ``true`` or ``yes``; any other value is off): each valid prediction then carries an
``explanation``, the Grad-CAM overlay of :func:`leukostage.explain.explain_rgb`, drawn at most
``explain.EXPLAIN_MAX_SIDE`` pixels on a side; a request gets at most ``MAX_EXPLAINED_PIXELS`` of them (later
predictions say ``explanation_omitted``). ``?class=<key>`` explains that class instead of the predicted one (a key in
any case, or a display name) and implies ``explain``; an unknown class is a 400 ``bad_class``, and ``class`` with
``explain`` set to off is a 400 ``class_without_explain``. Every request has a time budget (``REQUEST_BUDGET_S``,
``uploads.Work``, started for every route by ``create_app``): past it, a 503 ``over_time_budget``.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from flask import Blueprint, current_app, g, jsonify, request

from ..classes import parse_class
from ..explain import EXPLAIN_MAX_SIDE, explain_rgb
from ..imaging import capped_size
from ..predict import Analysis
from .context import PREDICTOR_KEY, can_explain, predictor
from .openapi import build_spec
from .responses import NOT_A_SMEAR_STATUS, STATUS_BY_CODE, ApiError
from .uploads import Upload, Work, uploads

bp = Blueprint("api", __name__)

EXPLAIN_ON = frozenset({"1", "true", "yes"})  # ?explain= values that ask for Grad-CAM (case-insensitive)


class Explain(NamedTuple):
    """What the query string asks for: Grad-CAM or not, and for which class (None: the predicted one)."""

    on: bool
    class_key: str | None

    @classmethod
    def from_request(cls) -> Explain:
        """Parse ``?explain=`` and ``?class=``; ``class`` alone implies ``explain`` (asking which class's evidence
        to show is asking for the heat map). Call it after the body is read (an early error response with the
        upload still unread can reach the client as a connection reset).

        Raises:
            ApiError: 400 ``bad_class`` for an unknown class (checked even without ``explain``, to catch typos);
                400 ``class_without_explain`` when ``class`` comes with ``explain`` explicitly off;
                501 ``explain_unavailable`` when Grad-CAM is asked of a model without its outputs.
        """
        asked = request.args.get("explain")
        on = asked is not None and asked.strip().lower() in EXPLAIN_ON
        key = request.args.get("class") or None
        if key is not None:
            try:
                key = parse_class(key).key
            except ValueError as exc:
                raise ApiError(400, "bad_class", f"The 'class' parameter: {exc}.") from None
            if asked is None:
                on = True
            elif not on:
                raise ApiError(
                    400,
                    "class_without_explain",
                    f"'class={key}' chooses which class the heat map explains, but explain={asked!r} "
                    "turns the heat map off; drop one of the two (explain=1 or no explain at all).",
                )
        if on and not can_explain():
            raise ApiError(
                501,
                "explain_unavailable",
                "This model was exported without the Grad-CAM outputs; "
                "ask without explain, or re-export it with leukostage export.",
            )
        return cls(on, key)


def _payload(analysis: Analysis, explain: Explain) -> dict:
    """A prediction as the API returns it: the CLI's object, the model that made it, where the time went, and with
    ``explain`` the Grad-CAM overlay (its time is counted in ``timing_ms`` as ``explain`` and in ``total``), unless
    the request's heat-map pixels are spent: then ``explanation_omitted`` says so instead."""
    payload = {**analysis.result, "model": predictor().info, "timing_ms": analysis.timing_ms}
    if not explain.on:
        return payload
    work: Work = g.work
    if not work.take_pixels(*capped_size(*analysis.view.shape[:2], EXPLAIN_MAX_SIDE)):
        most = current_app.config["MAX_EXPLAINED_PIXELS"]
        payload["explanation_omitted"] = {
            "code": "explain_limit",
            "message": f"No heat map: this request's heat maps already use the {most:,} pixels one request may "
            "have; send this image in its own request with explain=1.",
        }
        return payload
    work.check_time()
    t0 = time.perf_counter()
    payload["explanation"] = explain_rgb(predictor(), analysis.view, explain.class_key, outputs=analysis.outputs)
    ms = (time.perf_counter() - t0) * 1000
    timing = dict(analysis.timing_ms)
    timing["explain"] = round(ms, 3)
    timing["total"] = round(timing.get("total", 0.0) + ms, 3)
    payload["timing_ms"] = timing
    return payload


def _read_request(field: str, limit: int, too_many: str) -> tuple[list[Upload], Explain]:
    """The uploads of ``field`` and the explain options, read in that order (body first, see ``Explain``).

    Raises:
        ApiError: 400 ``no_file`` without an upload; 400 ``too_many_files`` (``too_many``, formatted with the count
            as ``n``) over ``limit``; the errors of :meth:`Explain.from_request`.
    """
    files = uploads(field)
    explain = Explain.from_request()
    if not files:
        raise ApiError(
            400,
            "no_file",
            f"No file in the request: send the image as multipart/form-data in the field "
            f"'{field}' (JPEG, PNG, TIFF or BMP).",
        )
    if len(files) > limit:
        raise ApiError(400, "too_many_files", too_many.format(n=len(files)))
    return files, explain


@bp.post("/predict")
def predict_one():
    """One image in the multipart field ``file``: 200 with the prediction, or an error status."""
    files, explain = _read_request(
        "file", 1, "/predict takes one file; {n} were sent. Use /api/v1/predict for several."
    )
    refused = files[0].refusal()
    if refused:
        files[0].entry(*refused[1:])  # counted like the list's entries
        raise ApiError(*refused)
    g.work.check_time()
    analysis = files[0].analyse(explain.on)
    result = analysis.result
    if not result["valid"]:
        # what the validator measured, and how the picture was taken (a photo through the eyepiece, cropped)
        extra = {key: result[key] for key in ("checks", "capture") if result.get(key)}
        raise ApiError(
            STATUS_BY_CODE.get(result["code"], NOT_A_SMEAR_STATUS), result["code"], result["reason"], **extra
        )
    return jsonify(_payload(analysis, explain))


@bp.post("/api/v1/predict")
def predict_many():
    """One or many images in the multipart field ``files``: 200 with one entry per file, in order."""
    limit = current_app.config["MAX_FILES"]
    files, explain = _read_request("files", limit, f"{{n}} files were sent; at most {limit} per request.")
    out = []
    for upload in files:
        refused = upload.refused_entry()
        if refused:
            out.append(refused)
            continue
        g.work.check_time()
        analysis = upload.analyse(explain.on)
        if analysis.result["valid"]:
            out.append(_payload(analysis, explain))
        else:
            out.append({**analysis.result, "timing_ms": analysis.timing_ms})
    return jsonify(out)


@bp.get("/api/v1/health")
def health():
    """200 once this worker's model is loaded (it is loaded before the app serves anything)."""
    loaded = current_app.extensions.get(PREDICTOR_KEY)
    if loaded is None:
        raise ApiError(503, "model_not_loaded", "The model is not loaded yet; retry shortly.")
    return jsonify({"status": "ok", "model": loaded.info})


@bp.get("/api/v1/model")
def model_card():
    """The model card: how the model was trained, its metrics, its intended use."""
    return jsonify(predictor().card)


@bp.get("/api/v1/openapi.json")
def openapi():
    return jsonify(build_spec(current_app.config, predictor().info))
