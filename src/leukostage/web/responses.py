"""Every error as JSON ``{"error": {"code", "message"}}`` with the right status, and security headers on every response.

No handler here ever shows a stack trace: an unexpected exception is logged and answered with a generic 500.
"""

from __future__ import annotations

import json

from flask import Flask, Response, current_app, jsonify, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..cases.service import ServiceError
from ..imaging import size_limit_message

# The page loads its own script, style sheet and fonts only (it must work offline). Images: the preview is a blob:
# URL of the chosen file, the Grad-CAM overlay a data: URL from the JSON answer; nothing else is allowed.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"

# What the validator's codes mean over HTTP. Anything not listed (the colour and content checks, and codes the
# validator may add later) is a readable image that is not a usable smear: 422.
STATUS_BY_CODE = {
    "unreadable": 415,  # not an image we can read (by content, whatever the name or declared type)
    "unsupported_format": 415,  # GIF, WebP
    "animated": 415,
    "too_large": 413,  # more pixels than imaging.MAX_PIXELS (decompression-bomb guard)
    "too_small": 422,  # a readable image with too few pixels to analyse
}
NOT_A_SMEAR_STATUS = 422


class ApiError(Exception):
    """An error a view raises to answer with ``status`` and the JSON error body."""

    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


# gunicorn's own error answers (see server.write_json_error): its reason phrase or tag -> (code, message).
GUNICORN_ERRORS = {
    "worker_timeout": (
        "worker_timeout",
        "The server stopped this request: it took longer than the worker timeout. "
        "Send fewer or smaller images per request, or ask without explain.",
    ),
    "Internal Server Error": ("worker_failed", "The server failed to process this request; the error was logged."),
}


def error_document(status: int, reason: str, message: str) -> tuple[bytes, list[tuple[str, str]]]:
    """The JSON body and headers for an error answered outside Flask (by gunicorn's worker): the app's error shape
    and the security headers of every API response."""
    code, text = (
        GUNICORN_ERRORS.get(message)
        or GUNICORN_ERRORS.get(reason)
        or (reason.lower().replace(" ", "_"), message or reason)
    )
    body = json.dumps({"error": {"code": code, "message": text}}).encode()
    return body, [("Content-Type", "application/json"), *API_HEADERS.items()]


def error_response(status: int, code: str, message: str, **extra) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message, **extra}}), status


def drain_refused_body() -> None:
    """Read (and drop) the rest of a refused upload, up to DRAIN_LIMIT.

    Closing a connection with unread request data makes the kernel send a reset, and the client may then lose the
    413 instead of reading it. Bodies of unknown length are drained only when the server marks the input as
    terminated (gunicorn does), since reading a raw socket past the body would block.
    """
    stream = request.environ.get("wsgi.input")
    length = request.content_length
    if stream is None or (length is None and not request.environ.get("wsgi.input_terminated")):
        return
    remaining = current_app.config["DRAIN_LIMIT"] if length is None else min(length, current_app.config["DRAIN_LIMIT"])
    try:
        while remaining > 0:
            chunk = stream.read(min(1 << 16, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
    except (OSError, ValueError):  # the client went away: nothing left to answer
        pass


def _api_error(exc: ApiError):
    return error_response(exc.status, exc.code, exc.message, **exc.extra)


def _service_error(exc: ServiceError):
    """A case service refusal, with its status and code (the case pages answer theirs as pages)."""
    drain_refused_body()
    return error_response(exc.status, exc.code, exc.message)


def _csrf_failed(exc: CSRFError):
    drain_refused_body()
    return error_response(
        400,
        "csrf_failed",
        f"{exc.description} Reload the page and try again; API clients send "
        "'Authorization: Bearer <token>' instead of the session cookie.",
    )


def _too_large(exc: RequestEntityTooLarge):
    """413 for a body over the route's limit, saying which limit: one file's on ``/predict`` (``file_too_large``),
    the whole request's on ``/api/v1/predict`` (``request_too_large``)."""
    limit = request.max_content_length
    length = request.content_length
    drain_refused_body()
    if limit is None or (length is not None and length <= limit):  # Werkzeug's form limits, not the body size
        return error_response(
            413,
            "form_too_large",
            "The form has too many parts or an oversized text field; send only the image, as a file field.",
        )
    if request.endpoint == "api.predict_one":
        file_limit = current_app.config["MAX_FILE_BYTES"]
        return error_response(
            413, "file_too_large", size_limit_message(length, file_limit, "file"), limit_bytes=file_limit
        )
    return error_response(413, "request_too_large", size_limit_message(length, limit, "request"), limit_bytes=limit)


def _http_error(exc: HTTPException):
    response = exc.get_response()  # keeps headers such as Allow on 405
    code = (exc.name or "http_error").lower().replace(" ", "_")
    response.set_data(jsonify({"error": {"code": code, "message": exc.description}}).get_data())
    response.mimetype = "application/json"
    return response


def _unexpected(exc: Exception):
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", "The server failed to process this request; the error was logged.")


def register_error_handlers(app: Flask) -> None:
    """Every error the app answers, as JSON (a blueprint may answer its own as pages: see ``cases_pages``)."""
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(ServiceError, _service_error)
    app.register_error_handler(CSRFError, _csrf_failed)
    app.register_error_handler(RequestEntityTooLarge, _too_large)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
API_HEADERS = {"Content-Security-Policy": API_CSP, **COMMON_HEADERS, "Cache-Control": "no-store"}


def security_headers(response: Response) -> Response:
    """Headers for every response: a CSP (strict for the page, stricter for data), no sniffing, no framing, and
    no caching of anything but the static files (results are never stored by browsers or proxies)."""
    headers = response.headers
    headers["Content-Security-Policy"] = PAGE_CSP if response.mimetype == "text/html" else API_CSP
    headers.update(COMMON_HEADERS)
    if request.endpoint != "static":
        headers["Cache-Control"] = "no-store"
    return response
