"""``GET /metrics`` in the Prometheus text format, when ``METRICS`` ($LEUKOSTAGE_METRICS=1) is on; 404 otherwise.

What is counted:

- ``leukostage_http_requests_total{method, route, status}`` and the latency histogram
  ``leukostage_http_request_duration_seconds{route}``; ``route`` is the URL rule (``/api/v1/cases/<int:case_id>``),
  never the path, so no case id, accession or file name becomes a label.
- ``leukostage_results_total{outcome, detail}``: every analysed upload (``/predict``, ``/api/v1/predict``, case
  uploads) by outcome: ``class`` with the class key, ``uncertain`` with its reason, ``refused`` with the code.
- ``leukostage_model_info{name, version}`` = 1: the model this server answers with.

Under gunicorn every worker is a process with its own counters: ``leukostage serve`` then runs prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a directory the workers share, emptied at start; see
``server.metrics_directory``), and each scrape builds a registry whose collector adds up every worker's files, so a
scrape counts every request whichever worker answered it. Without that directory (Flask's development server, the
tests) the process's own registry is served. prometheus_client is imported only when metrics are on.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

from flask import Flask, Response, current_app, g, request

METRICS_KEY = "leukostage.metrics"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0)
UNMATCHED = "<unmatched>"  # the route label of a request no URL rule matched (a 404): the path is never a label


class Instruments(NamedTuple):
    requests: object
    latency: object
    results: object
    model: object


_instruments: Instruments | None = None  # one set per process: prometheus_client registers each name once


def _make_instruments() -> Instruments:
    global _instruments
    if _instruments is None:
        from prometheus_client import Counter, Gauge, Histogram

        _instruments = Instruments(
            Counter("leukostage_http_requests", "HTTP requests answered", ["method", "route", "status"]),
            Histogram(
                "leukostage_http_request_duration_seconds",
                "Time to answer a request, by route",
                ["route"],
                buckets=LATENCY_BUCKETS_S,
            ),
            Counter(
                "leukostage_results",
                "Analysed uploads by outcome: class (detail: its key), uncertain (the reason), refused (the code)",
                ["outcome", "detail"],
            ),
            Gauge(
                "leukostage_model_info",
                "The model this server answers with",
                ["name", "version"],
                multiprocess_mode="max",
            ),
        )
    return _instruments


def init_app(app: Flask, model: dict) -> None:
    """With ``METRICS`` on: the request hooks, the model gauge and ``GET /metrics``; otherwise nothing at all."""
    if not app.config["METRICS"]:
        return
    instruments = _make_instruments()
    instruments.model.labels(str(model.get("name", "unknown")), str(model.get("version", "unknown"))).set(1)
    app.extensions[METRICS_KEY] = instruments
    app.before_request(_start)
    app.after_request(_observe)
    app.add_url_rule("/metrics", "metrics", scrape, methods=["GET"])


def _route() -> str:
    return request.url_rule.rule if request.url_rule is not None else UNMATCHED


def _start() -> None:
    g.metrics_t0 = time.perf_counter()


def _observe(response: Response) -> Response:
    instruments: Instruments = current_app.extensions[METRICS_KEY]
    route = _route()
    instruments.requests.labels(request.method, route, str(response.status_code)).inc()
    started = g.get("metrics_t0")
    if started is not None:
        instruments.latency.labels(route).observe(time.perf_counter() - started)
    return response


def outcome(result: dict) -> tuple[str, str]:
    """(outcome, detail) of one result object: ("class", key), ("uncertain", reason) or ("refused", code)."""
    if not result.get("valid"):
        return "refused", str(result.get("code") or "unknown")
    if result.get("label") == "uncertain":
        return "uncertain", str(result.get("uncertain_reason") or "low_confidence")
    return "class", str(result.get("label"))


def count_result(result: dict) -> None:
    """Count one analysed upload (nothing when metrics are off)."""
    instruments = current_app.extensions.get(METRICS_KEY)
    if instruments is not None:
        instruments.results.labels(*outcome(result)).inc()


def scrape() -> Response:
    """Every worker's counters (multiprocess mode: a fresh registry and collector per scrape), or this process's."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
