"""GET /metrics: off (404) unless METRICS is on; the Prometheus text format with requests by route and status,
latency histograms, results by outcome and the model's name; under gunicorn, every worker's counts in every scrape;
no case id, accession or patient reference in any label."""

from __future__ import annotations

import io
import os
import signal
import time

import cv2
import pytest
from cases_fixtures import People
from prometheus_client.parser import text_string_to_metric_families
from web_server import LiveServer, get, post

from leukostage.web import create_app


@pytest.fixture(scope="module")
def non_smear(data_dir) -> bytes:
    """A real histology photograph, as a small JPEG (the validator refuses it: not a blood smear)."""
    ok, jpeg = cv2.imencode(".jpg", cv2.imread(str(sorted((data_dir / "not_blood").glob("*"))[0])))
    assert ok
    return jpeg.tobytes()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scrape: dict, metric: str, **labels) -> float:
    """The sum of the samples called ``metric`` whose labels include ``labels`` (0 when there are none)."""
    return sum(v for (n, ls), v in scrape.items() if n == metric and labels.items() <= dict(ls).items())


def scrape(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain" and "version=" in r.headers["Content-Type"]
    return samples(r.get_data(as_text=True))


def test_metrics_are_off_by_default(model_path):
    app = create_app({"TESTING": True, "MODEL_PATH": str(model_path), "WARM_UP": False})
    r = app.test_client().get("/metrics")
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"


def test_requests_latency_results_and_model(model_path, sample_smears, non_smear):
    app = create_app({"TESTING": True, "MODEL_PATH": str(model_path), "WARM_UP": False, "METRICS": "1"})
    c = app.test_client()
    before = scrape(c)
    smear = sample_smears["advanced"].read_bytes()
    statuses = [c.post("/predict", data={"file": (io.BytesIO(b), "x.jpg")}).status_code for b in (smear, smear)]
    statuses.append(c.post("/predict", data={"file": (io.BytesIO(non_smear), "y.jpg")}).status_code)
    statuses.append(c.post("/predict", data={"file": (io.BytesIO(b""), "empty.jpg")}).status_code)
    files = [(io.BytesIO(b), n) for b, n in ((smear, "a.jpg"), (b"not an image", "b.jpg"))]
    assert c.post("/api/v1/predict", data={"files": files}).status_code == 200
    assert statuses == [200, 200, 422, 400]
    after = scrape(c)

    def delta(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("leukostage_http_requests_total", route="/predict", method="POST") == 4
    assert delta("leukostage_http_requests_total", route="/predict", status="200") == 2
    assert delta("leukostage_http_requests_total", route="/predict", status="422") == 1
    assert delta("leukostage_http_requests_total", route="/api/v1/predict", status="200") == 1
    assert delta("leukostage_http_request_duration_seconds_count", route="/predict") == 4
    assert delta("leukostage_http_request_duration_seconds_bucket", route="/predict", le="+Inf") == 4
    assert delta("leukostage_results_total", outcome="class", detail="advanced") == 3
    refused = {d: delta("leukostage_results_total", outcome="refused", detail=d) for d in ("empty_file", "unreadable")}
    assert refused == {"empty_file": 1, "unreadable": 1}
    assert delta("leukostage_results_total", outcome="refused") == 3  # the non-smear's code as well
    info = app.extensions["leukostage.predictor"].info
    assert value(after, "leukostage_model_info", name=info["name"], version=info["version"]) == 1


def test_case_routes_are_labelled_by_rule_never_by_path(instance, people, model_path, case_fields):
    """A case's id, accession or patient reference never becomes a label (the route is the URL rule)."""
    app = create_app(
        {
            "TESTING": True,
            "MODEL_PATH": str(model_path),
            "WARM_UP": False,
            "METRICS": True,
            "DATABASE_URL": instance.url,
            "INSTANCE": str(instance.root),
            "STORAGE": str(instance.storage),
        }
    )
    c = app.test_client()
    cid = c.post(
        "/api/v1/cases",
        json={"accession": "ACC-SECRET-5", "patient_ref": "Patient/SECRET"},
        headers=People.auth(people.tech),
    ).json["id"]
    c.post(
        f"/api/v1/cases/{cid}/images",
        headers=People.auth(people.tech),
        content_type="multipart/form-data",
        data={"files": [(io.BytesIO(case_fields["early"][0]), "Patient-SECRET-field.jpg")]},
    )
    c.get(f"/api/v1/cases/{cid}?q=SECRET", headers=People.auth(people.tech))
    c.get("/no/such/SECRET/path")
    text = c.get("/metrics").get_data(as_text=True)
    assert "SECRET" not in text and f"/api/v1/cases/{cid}" not in text
    assert 'route="/api/v1/cases/<int:case_id>/images"' in text and 'route="<unmatched>"' in text
    assert value(samples(text), "leukostage_results_total", outcome="class", detail="early") >= 1


@pytest.mark.slow
def test_every_worker_is_counted_in_every_scrape(model_path, sample_smears, tmp_path):
    """gunicorn with 2 workers: whichever worker answers a request or a scrape, the scrape counts all requests; a
    worker that ends (here SIGTERM: gunicorn replaces it) keeps its counts, and the others keep counting."""
    smear = sample_smears["early"].read_bytes()
    env = {"LEUKOSTAGE_METRICS": "1", "LEUKOSTAGE_INSTANCE": str(tmp_path / "instance")}

    def scraped_counts(port: int) -> set[tuple[float, float]]:
        seen = set()
        for _ in range(6):
            status, body = get(port, "/metrics")
            assert status == 200
            scraped = samples(body.decode())
            seen.add(
                (
                    value(scraped, "leukostage_http_requests_total", route="/predict", status="200"),
                    value(scraped, "leukostage_results_total", outcome="class", detail="early"),
                )
            )
        return seen

    with LiveServer(model_path, workers=2, env=env, log=tmp_path / "serve.log") as server:
        assert [post(server.port, "/predict", "file", [("s.jpg", smear)])[0] for _ in range(12)] == [200] * 12
        assert scraped_counts(server.port) == {(12.0, 12.0)}
        first = server.worker_pids()
        os.kill(first[0], signal.SIGTERM)  # the worker exits; the master starts another
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (first[0] in server.worker_pids() or len(server.worker_pids()) < 2):
            time.sleep(0.2)
        time.sleep(3)  # the new worker loads its model
        assert [post(server.port, "/predict", "file", [("s.jpg", smear)])[0] for _ in range(4)] == [200] * 4
        assert scraped_counts(server.port) == {(16.0, 16.0)}
    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert "Traceback" not in log, log
