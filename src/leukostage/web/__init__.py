"""The web app and HTTP API: one application factory, one config, one request context, six blueprints.

:func:`create_app` registers every blueprint itself: ``pages`` (the upload page), ``api`` (prediction, health, model
card, OpenAPI), ``cases_api`` and ``cases_pages`` (the laboratory's cases, over ``cases.service``), ``login``
(sign-in and sign-out), ``users`` (the admin's user management, page and API, over ``cases.accounts``);
``/metrics`` when ``METRICS`` is on (:mod:`.metrics`); every request's time budget (:mod:`.uploads`); then the JSON
error handlers and the security headers. The blueprints share what a request needs through :mod:`.context` (the
model, a database transaction, the image store), :mod:`.uploads`, :mod:`.auth`, :mod:`.frame` and
:mod:`.responses`, and never import one another.

Every setting lives in :func:`create_app`'s defaults. Each can be overridden by an environment variable
``LEUKOSTAGE_<KEY>`` (values parsed as JSON where they can be, e.g. ``LEUKOSTAGE_MAX_FILE_BYTES=5000000``; on/off
settings take 1, true, yes or on) and, in tests, by ``test_config``. The model is loaded here, once per process:
under gunicorn that is once per worker, after the fork (no ``--preload``), so no ONNX Runtime thread pool is shared
across a fork.

Nothing here imports torch (an import-linter contract in pyproject.toml checks it, and that no blueprint imports
another).
"""

from __future__ import annotations

import io
from typing import IO

from flask import Flask, Request, current_app

from ..imaging import MAX_BYTES, MAX_REQUEST_BYTES
from ..predict import Predictor, default_model_path
from ..validate import DEFAULT_PRESET, PRESETS

# Work per request, bounded so that one request cannot hold a worker until gunicorn kills it (gunicorn's timeout,
# server.worker_timeout_s, is derived from REQUEST_BUDGET_S): at most this much server time, and at most this many
# heat-map pixels (four overlays at explain.EXPLAIN_MAX_SIDE).
REQUEST_BUDGET_S = 20.0
EXPLAINED_PIXELS_PER_REQUEST = 4 * 1024 * 1024
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart framing around one file: boundaries, part headers, a long file name
# Failed sign-ins allowed in a sliding window, per account and per client address (many people may share one
# address, a laboratory's NAT, so it has the larger allowance); counted in the database, shared by every node.
LOGIN_WINDOW_S = 15 * 60
LOGIN_MAX_FAILURES = 10
LOGIN_MAX_FAILURES_PER_ADDRESS = 50
FLAG_SETTINGS = ("SESSION_COOKIE_SECURE", "METRICS")  # on/off settings: 1, true, yes or on (any case) turn them on


class InMemoryRequest(Request):
    """Keeps every uploaded file part in memory (Werkzeug spools large parts to a temporary file by default).

    The request body is capped before any part is read (see :attr:`max_content_length`), so memory stays bounded,
    and no upload ever touches the disk, under a client-supplied name or any other.
    """

    @property
    def max_content_length(self) -> int | None:
        """The body limit of this route: one file (plus the form's framing) on ``/predict``, ``MAX_REQUEST_BYTES``
        elsewhere. Each file is then held to ``MAX_FILE_BYTES`` (see ``uploads.Upload``)."""
        config = current_app.config
        if self.endpoint == "api.predict_one":
            return config["MAX_FILE_BYTES"] + FORM_OVERHEAD_BYTES
        return config["MAX_REQUEST_BYTES"]

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app: config, the model (loaded once), the case settings and auth, every blueprint, the error
    handlers, the security headers.

    Args:
        test_config: overrides applied last (tests pass e.g. ``MODEL_PATH`` or a small ``MAX_FILE_BYTES``).

    Raises:
        FileNotFoundError: the model or its card is missing.
        ValueError: an unknown validation preset, or a model whose classes do not match this version.
    """
    app = Flask(__name__)
    app.config.from_mapping(
        MODEL_PATH=str(default_model_path()),  # $LEUKOSTAGE_MODEL, else the model shipped in the package
        MAX_FILE_BYTES=MAX_BYTES,  # each uploaded file; a larger one is refused (413 file_too_large, or its entry)
        MAX_REQUEST_BYTES=MAX_REQUEST_BYTES,  # a whole /api/v1/predict body; larger gets 413 request_too_large
        MAX_FILES=32,  # files per /api/v1/predict request
        MAX_EXPLAINED_PIXELS=EXPLAINED_PIXELS_PER_REQUEST,  # overlay pixels per request; later files get none
        REQUEST_BUDGET_S=REQUEST_BUDGET_S,  # server time per request; past it: 503 over_time_budget (see api)
        ORT_THREADS=None,  # ONNX Runtime intra-op threads; None = all cores. `serve` sets cores // workers
        VALIDATION_PRESET=DEFAULT_PRESET,
        DRAIN_LIMIT=64 * 1024 * 1024,  # after a 413, read at most this much of the refused body (clean close)
        WARM_UP=True,  # run the validator and the model once at start: config errors fail here, not per request
        SESSION_COOKIE_SECURE=False,  # true behind HTTPS: browsers then send the session cookie over HTTPS only
        TRUSTED_PROXIES=0,  # reverse proxies in front of the app whose X-Forwarded-For/-Proto/-Host are believed
        LOGIN_WINDOW_S=LOGIN_WINDOW_S,  # failed sign-ins count for this long
        LOGIN_MAX_FAILURES=LOGIN_MAX_FAILURES,  # per account in the window; then 429 until the oldest ages out
        LOGIN_MAX_FAILURES_PER_ADDRESS=LOGIN_MAX_FAILURES_PER_ADDRESS,  # per client address in the window
        METRICS=False,  # GET /metrics (Prometheus text format); 404 when off
    )
    app.config.from_prefixed_env("LEUKOSTAGE")
    if test_config is not None:
        app.config.from_mapping(test_config)
    if app.config["VALIDATION_PRESET"] not in PRESETS:
        raise ValueError(
            f"unknown VALIDATION_PRESET {app.config['VALIDATION_PRESET']!r}; expected one of {', '.join(PRESETS)}"
        )
    for key in FLAG_SETTINGS:
        app.config[key] = as_flag(app.config[key])
    proxies = app.config["TRUSTED_PROXIES"]
    if not isinstance(proxies, int) or isinstance(proxies, bool) or proxies < 0:
        raise ValueError(
            f"LEUKOSTAGE_TRUSTED_PROXIES={proxies!r}: give the number of reverse proxies in front, 0 or more"
        )
    if proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # the client address, scheme and host as the outermost of `proxies` trusted proxies saw them
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)

    app.request_class = InMemoryRequest
    app.json.sort_keys = False  # keep the field order of `leukostage predict --json`

    threads = app.config["ORT_THREADS"]
    predictor = Predictor.load(app.config["MODEL_PATH"], threads=int(threads) if threads else None)
    if app.config["WARM_UP"]:
        warm_up(predictor, app.config["VALIDATION_PRESET"])

    # imported here, not at the top: `leukostage serve` imports this package in its master process, which needs
    # neither the views nor their SQLAlchemy and Flask-Login
    from . import api, auth, cases_api, cases_pages, context, frame, login, metrics, pages, responses, uploads, users

    context.init_app(app, predictor)  # the model for every request; where the case database and images live
    auth.init_auth(app)  # sessions, bearer tokens, CSRF, the session secret
    frame.init_app(app)  # the disclaimer, also for pages outside the blueprints' views
    metrics.init_app(app, predictor.info)  # GET /metrics and the counters behind it, when METRICS is on
    app.before_request(uploads.start_the_clock)  # every request's time budget (REQUEST_BUDGET_S)
    for blueprint in (pages.bp, api.bp, cases_api.bp, cases_pages.bp, login.bp, users.bp):
        app.register_blueprint(blueprint)
    responses.register_error_handlers(app)
    app.after_request(responses.security_headers)
    return app


def as_flag(value: object) -> bool:
    """An on/off setting from the environment or a test config: 1, true, yes, on (any case) are on."""
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def warm_up(predictor: Predictor, preset: str) -> None:
    """One pass through the validator (loads its calibration) and the model (allocates ONNX Runtime's buffers)."""
    import numpy as np

    from ..validate import validate_image

    validate_image(np.full((64, 64, 3), 255, np.uint8), preset)
    predictor.predict_proba(np.zeros((1, predictor.image_size, predictor.image_size, 3), np.float32))


def serve(
    host: str = "127.0.0.1", port: int = 8000, workers: int | None = None, model: str | None = None, debug: bool = False
) -> int:
    """Run the app: gunicorn with ``workers`` processes, or Flask's development server with ``debug``.

    See :mod:`leukostage.web.server`.
    """
    from .server import serve as _serve

    return _serve(host=host, port=port, workers=workers, model=model, debug=debug)
