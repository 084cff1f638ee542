"""The web app through Flask's test client: every route, every error status, the headers, the page's assets."""

from __future__ import annotations

import base64
import html as html_lib
import io
import json
import re
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from web_server import multipart, smear_candidates

from leukostage import cli
from leukostage.classes import BY_KEY, CLASS_KEYS, CLASSES, DISCLAIMER, UNCERTAIN_COLOUR, luminance, text_colour
from leukostage.cores import threads_per_worker
from leukostage.explain import EXPLAIN_MAX_SIDE, METHOD, colour_scale_info
from leukostage.imaging import MAX_BYTES, decode_image, size_limit_message
from leukostage.validate import get_preset, validate_bytes, validate_path
from leukostage.web import REQUEST_BUDGET_S, create_app
from leukostage.web.context import PREDICTOR_KEY
from leukostage.web.server import bind_address, gunicorn_options, serve, worker_timeout_s

WEB = Path(__file__).resolve().parents[1] / "src" / "leukostage" / "web"


# --- inputs, made in code ------------------------------------------------------------------------------------------
def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", rgb)[1].tobytes()


def blank_white() -> bytes:
    """The simplest non-smear: a flat white field (no colour, no stain)."""
    return png(np.full((256, 256, 3), 255, np.uint8))


def grey_text() -> bytes:
    """A flat grey page with text on it, as a JPEG: a readable image that is not a smear."""
    img = np.full((240, 320, 3), 200, np.uint8)
    cv2.putText(img, "not a smear", (20, 120), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (30, 30, 30), 2)
    return cv2.imencode(".jpg", img)[1].tobytes()


def png_bomb(side: int = 8000) -> bytes:
    """A real PNG of side x side black pixels (64 megapixels) that compresses to about 60 kB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    z = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + one grey byte per pixel
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


GIF_STILL = b"GIF89a\x20\x00\x20\x00\x80\x00\x00" + b"\x00" * 6 + b"\x21\xf9\x04\x00\x00\x00\x00\x00;"
GIF_ANIMATED = GIF_STILL[:-1] + b"\x21\xf9\x04\x00\x0a\x00\x00\x00;"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 24
PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


# --- fixtures ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(model_path):
    return create_app({"TESTING": True, "MODEL_PATH": str(model_path), "ORT_THREADS": 1})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def smear_path(app, data_dir) -> Path:
    """A genuine smear the app's validator accepts."""
    for path in smear_candidates(data_dir):
        if validate_path(path, app.config["VALIDATION_PRESET"]).valid:
            return path
    pytest.fail(f"the validator rejects every candidate smear under {data_dir}")


@pytest.fixture(scope="module")
def smear(smear_path) -> bytes:
    return smear_path.read_bytes()


def upload(client, data: bytes, name: str = "image.jpg", field: str = "file", path: str = "/predict"):
    """POST one file. The body is built here: Werkzeug's test client leaks a temporary file for large form data."""
    body, content_type = multipart(field, [(name, data)])
    return client.post(path, data=body, content_type=content_type)


# --- GET / and the static assets ------------------------------------------------------------------------------------
def test_page_renders_with_disclaimer_and_class_colours(client):
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert "Research decision support, not a diagnosis" in html
    text = re.sub(r"<[^>]+>", "", html_lib.unescape(html))
    assert DISCLAIMER in text and text.count("Research decision support, not a diagnosis") == 2  # notice, result
    config = json.loads(
        re.search(r'<script type="application/json" id="page-config">(.*?)</script>', html, re.S).group(1)
    )
    colours = {c["key"]: c["colour"] for c in config["classes"]}
    assert colours == {**{c.key: c.colour for c in CLASSES}, "uncertain": UNCERTAIN_COLOUR}
    assert config["max_bytes"] == 20 * 1024 * 1024
    assert config["too_large_message"] == size_limit_message(None, MAX_BYTES, "file")  # the server's own words
    assert config["colour_scale"] == colour_scale_info()  # the legend beside the heat map: the overlay's own ramp


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/static/dropzone.js", "/static/style.css"])
def test_page_and_assets_load_nothing_from_elsewhere(client, path):
    """The page must work offline: no CDN, no external fonts, no absolute URLs at all."""
    with client.get(path) as r:
        assert r.status_code == 200
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", r.get_data(as_text=True), re.I)


def test_page_has_no_inline_script_or_style(client):
    """The CSP allows only the app's own files, so inline code would be blocked; keep none."""
    html = client.get("/").get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*(src=|application/json))", html)
    assert not re.search(r"\sstyle=|<style|\son[a-z]+=", html)


@pytest.mark.parametrize("background", [c.colour for c in CLASSES] + [UNCERTAIN_COLOUR])
def test_badge_text_is_readable(background):
    fg = text_colour(background)
    hi, lo = sorted((luminance(fg), luminance(background)), reverse=True)
    assert (hi + 0.05) / (lo + 0.05) >= 4.5  # WCAG AA for normal text


# --- POST /predict --------------------------------------------------------------------------------------------------
def test_predict_returns_the_cli_object_plus_model_and_timing(client, app, smear, smear_path, model_path, capsys):
    r = upload(client, smear, name=smear_path.name)
    assert r.status_code == 200, r.json
    body = r.json
    assert body["valid"] is True and body["file"] == smear_path.name
    assert body["model"] == app.extensions[PREDICTOR_KEY].info
    assert set(body["timing_ms"]) == {"decode", "validate", "preprocess", "inference", "total"}
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-4

    assert (
        cli.main(
            [
                "predict",
                "--json",
                "--model",
                str(model_path),
                "--preset",
                app.config["VALIDATION_PRESET"],
                str(smear_path),
            ]
        )
        == 0
    )
    (from_cli,) = json.loads(capsys.readouterr().out)
    expected = {**from_cli, "file": smear_path.name}
    assert {k: v for k, v in body.items() if k not in ("model", "timing_ms")} == expected


def test_the_format_is_decided_by_content_not_name_or_type(client, smear):
    r = client.post(
        "/predict", data={"file": (io.BytesIO(smear), "notes.txt", "text/plain")}, content_type="multipart/form-data"
    )
    assert r.status_code == 200 and r.json["valid"] is True
    r = client.post(
        "/predict",
        data={"file": (io.BytesIO(b"plain text, not pixels"), "photo.jpg", "image/jpeg")},
        content_type="multipart/form-data",
    )
    assert r.status_code == 415 and r.json["error"]["code"] == "unreadable"


def test_client_file_name_is_only_echoed(client, smear, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = upload(client, smear, name="../../evil.jpg")
    assert r.status_code == 200 and r.json["file"] == "../../evil.jpg"
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent.parent / "evil.jpg").exists()


def test_uploads_stay_in_memory(app, smear):
    """Werkzeug spools parts over 500 kB to temporary files by default; this app keeps them in memory."""
    body, content_type = multipart("file", [("big.jpg", smear + b"\x00" * 600_000)])
    with app.test_request_context("/predict", method="POST", data=body, content_type=content_type):
        from flask import request

        assert isinstance(request.files["file"].stream, io.BytesIO)


# --- ?explain: the Grad-CAM overlay -----------------------------------------------------------------------------------
def overlay_shape(explanation: dict) -> tuple[int, ...]:
    """The (H, W, 3) of the explanation's overlay; fails unless it is base64 of a PNG."""
    data = base64.b64decode(explanation["overlay_png_base64"], validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape


def test_explain_adds_a_png_overlay_of_the_original_size(client, smear):
    plain = upload(client, smear).json
    assert "explanation" not in plain
    r = upload(client, smear, path="/predict?explain=1")
    assert r.status_code == 200, r.json
    body = r.json
    e = body["explanation"]
    info = BY_KEY[body["top_class"]]  # the predicted class by default, even when the label is uncertain
    height, width = decode_image(smear).shape[:2]  # under EXPLAIN_MAX_SIDE: the original resolution
    assert {k: v for k, v in e.items() if k != "overlay_png_base64"} == {
        "method": METHOD,
        "class": info.key,
        "display_class": info.display_name,
        "dataset_label": info.dataset_label,
        "media_type": "image/png",
        "width": width,
        "height": height,
        "colour_scale": colour_scale_info(),
    }
    assert overlay_shape(e) == (height, width, 3)  # not the model's input size
    drop = ("explanation", "timing_ms")
    assert {k: v for k, v in body.items() if k not in drop} == {k: v for k, v in plain.items() if k not in drop}
    timing = body["timing_ms"]
    assert timing["explain"] > 0 and timing["total"] >= timing["inference"] + timing["explain"]


@pytest.mark.parametrize(
    "value, on",
    [("1", True), ("true", True), ("YES", True), ("0", False), ("false", False), ("on", False), ("", False)],
)
def test_explain_values(client, smear, value, on):
    r = upload(client, smear, path=f"/predict?explain={value}")
    assert r.status_code == 200 and ("explanation" in r.json) is on


def test_class_parameter_explains_another_class(client, smear):
    top = upload(client, smear).json["top_class"]
    other = next(k for k in CLASS_KEYS if k != top)
    r = upload(client, smear, path=f"/predict?explain=1&class={other}")
    assert r.status_code == 200 and r.json["top_class"] == top
    assert r.json["explanation"]["class"] == other
    assert r.json["explanation"]["display_class"] == BY_KEY[other].display_name


@pytest.mark.parametrize("path, field", [("/predict", "file"), ("/api/v1/predict", "files")])
@pytest.mark.parametrize("query", ["explain=1&class=stage4", "explain=1&class=Early%20Pre", "class=nope"])
def test_unknown_class_is_400_listing_the_keys(client, smear, path, field, query):
    r = upload(client, smear, field=field, path=f"{path}?{query}")
    assert r.status_code == 400 and r.mimetype == "application/json"
    error = r.json["error"]
    assert error["code"] == "bad_class"
    assert all(k in error["message"] for k in CLASS_KEYS)


@pytest.mark.parametrize("path, field", [("/predict", "file"), ("/api/v1/predict", "files")])
@pytest.mark.parametrize(
    "query", ["class=mid", "class=MID", "class=Mid%20Stage", "class=pre-b%20all", "explain=1&class=Mid"]
)
def test_class_is_parsed_leniently_and_implies_explain(client, smear, path, field, query):
    r = upload(client, smear, field=field, path=f"{path}?{query}")
    assert r.status_code == 200, r.json
    body = r.json if path == "/predict" else r.json[0]
    assert body["explanation"]["class"] == "mid"


@pytest.mark.parametrize("value", ["0", "false", ""])
def test_class_with_explain_turned_off_is_400(client, smear, value):
    r = upload(client, smear, path=f"/predict?explain={value}&class=mid")
    assert r.status_code == 400 and r.json["error"]["code"] == "class_without_explain"
    assert "explain" in r.json["error"]["message"]


@pytest.mark.parametrize("make", [blank_white, grey_text], ids=["blank-white", "grey-text"])
def test_non_smear_gets_no_explanation(client, make):
    r = upload(client, make(), path="/predict?explain=1")
    assert r.status_code == 422 and set(r.json) == {"error"} and "explanation" not in r.json["error"]


def test_batch_explains_each_valid_file_only(client, smear):
    files = [
        (io.BytesIO(smear), "smear.jpg"),
        (io.BytesIO(blank_white()), "white.png"),
        (io.BytesIO(b"garbage"), "garbage.jpg"),
        (io.BytesIO(b""), "empty.jpg"),
    ]
    r = client.post("/api/v1/predict?explain=1", data={"files": files}, content_type="multipart/form-data")
    assert r.status_code == 200
    assert [e["valid"] for e in r.json] == [True, False, False, False]
    assert ["explanation" in e for e in r.json] == [True, False, False, False]
    assert overlay_shape(r.json[0]["explanation"]) == decode_image(smear).shape
    (plain,) = upload(client, smear, field="files", path="/api/v1/predict").json
    assert "explanation" not in plain


@pytest.fixture(scope="module")
def large_smear(smear_path) -> bytes:
    """The accepted smear mirrored out to 336 x 252 and enlarged 3.2 times, to 1075 x 806 pixels: a camera's frame
    larger than the overlay cap, its red cells within the range the capture layer rescales (a 3000-pixel upscale of a
    224-pixel field would be refused for its magnification)."""
    bgr = cv2.imread(str(smear_path))
    h, w = bgr.shape[:2]
    rgb = cv2.resize(np.pad(bgr, ((0, 252 - h), (0, 336 - w), (0, 0)), mode="symmetric"), (1075, 806))
    return cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def test_explanation_of_a_large_image_is_capped(client, app, large_smear):
    r = upload(client, large_smear, path="/predict?explain=1")
    assert r.status_code == 200, r.json
    e = r.json["explanation"]
    assert r.json["capture"]["rescaled_by"] < 0.5  # brought to the training scale first ...
    side = get_preset(app.config["VALIDATION_PRESET"]).capture.field_px
    assert (e["width"], e["height"]) == (side, side) and side <= EXPLAIN_MAX_SIDE  # ... and drawn over what was read
    assert overlay_shape(e) == (side, side, 3)


def test_explained_pixels_per_request_are_capped(client, app, smear, monkeypatch):
    height, width = decode_image(smear).shape[:2]
    monkeypatch.setitem(app.config, "MAX_EXPLAINED_PIXELS", 2 * height * width)  # room for two overlays
    body, content_type = multipart("files", [(f"{k}.jpg", smear) for k in range(4)])
    r = client.post("/api/v1/predict?explain=1", data=body, content_type=content_type)
    assert r.status_code == 200
    assert ["explanation" in e for e in r.json] == [True, True, False, False]
    for e in r.json[2:]:
        assert e["valid"] and e["label"] and e["explanation_omitted"]["code"] == "explain_limit"
        assert "own request" in e["explanation_omitted"]["message"]


@pytest.mark.parametrize("path, field", [("/predict?explain=1", "file"), ("/api/v1/predict?explain=1", "files")])
def test_a_request_over_its_time_budget_is_a_json_503(client, app, smear, monkeypatch, path, field):
    monkeypatch.setitem(app.config, "REQUEST_BUDGET_S", 0)
    r = upload(client, smear, field=field, path=path)
    assert r.status_code == 503 and r.mimetype == "application/json"
    assert r.json["error"]["code"] == "over_time_budget" and "fewer or smaller" in r.json["error"]["message"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")


class CountingSession:
    """Delegates to an ONNX Runtime session and counts inferences."""

    def __init__(self, session):
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_explained_prediction_runs_the_model_once(app, client, smear, monkeypatch):
    counter = CountingSession(app.extensions[PREDICTOR_KEY].session)
    monkeypatch.setattr(app.extensions[PREDICTOR_KEY], "session", counter)
    explained = upload(client, smear, path="/predict?explain=1").json
    assert counter.runs == 1 and "explanation" in explained
    other = upload(client, smear, path="/predict?explain=1&class=normal").json
    assert counter.runs == 2 and other["explanation"]["class"] == "normal"
    assert other["probabilities"] == explained["probabilities"]


def test_explain_of_a_model_without_gradcam_outputs_is_501(app, client, smear, monkeypatch):
    monkeypatch.setattr(app.extensions[PREDICTOR_KEY], "outputs", ["probabilities"])
    r = upload(client, smear, path="/predict?explain=1")
    assert r.status_code == 501 and r.json["error"]["code"] == "explain_unavailable"
    assert upload(client, smear).status_code == 200  # predictions still work
    html = client.get("/").get_data(as_text=True)
    assert '"explain": false' in html  # so the page does not ask for it


def test_page_asks_for_explanations_and_has_the_view_switch(client):
    html = client.get("/").get_data(as_text=True)
    assert '"explain": true' in html
    assert re.search(r'<button type="button" id="view-original" aria-pressed="true"[^>]*>Original</button>', html)
    assert re.search(r'<button type="button" id="view-heatmap" aria-pressed="false"[^>]*>Heat map</button>', html)
    assert 'id="heatmap-image"' in html and 'id="heatmap-caption"' in html


# Bad inputs with the status and code they must produce (None: the validator's own verdict, checked below).
BAD_UPLOADS = [
    pytest.param(lambda s: b"", 400, "empty_file", id="empty"),
    pytest.param(lambda s: b"not an image at all", 415, "unreadable", id="garbage"),
    pytest.param(lambda s: PDF, 415, "unreadable", id="pdf"),
    pytest.param(lambda s: s[: len(s) // 2], 415, "unreadable", id="truncated-jpeg"),
    pytest.param(lambda s: s[:300], 415, "unreadable", id="jpeg-header-only"),
    pytest.param(lambda s: GIF_STILL, 415, "unsupported_format", id="gif"),
    pytest.param(lambda s: GIF_ANIMATED, 415, "animated", id="animated-gif"),
    pytest.param(lambda s: WEBP, 415, "unsupported_format", id="webp"),
    pytest.param(lambda s: png_bomb(), 413, "too_large", id="decompression-bomb"),
    pytest.param(lambda s: png(np.full((16, 16, 3), 128, np.uint8)), 422, "too_small", id="too-small"),
    pytest.param(lambda s: blank_white(), 422, None, id="blank-white"),
    pytest.param(lambda s: grey_text(), 422, None, id="grey-text"),
]


@pytest.mark.parametrize("make, status, code", BAD_UPLOADS)
def test_bad_upload_gets_json_error_with_status(client, app, smear, make, status, code):
    data = make(smear)
    r = upload(client, data)
    assert r.status_code == status
    assert r.mimetype == "application/json"
    error = r.json["error"]
    assert set(error) >= {"code", "message"} and error["message"]
    if code is None:  # a readable non-smear: the validator's code, reason and checks, unchanged
        verdict = validate_bytes(data, app.config["VALIDATION_PRESET"])[1]
        assert not verdict.valid
        assert (error["code"], error["message"]) == (verdict.code, verdict.reason)
        assert error["checks"] == verdict.checks_dict()
    else:
        assert error["code"] == code
    assert "Traceback" not in r.get_data(as_text=True)


@pytest.mark.parametrize(
    "kwargs, code",
    [
        ({"data": {}, "content_type": "multipart/form-data"}, "no_file"),
        ({"data": {"image": (io.BytesIO(b"x"), "a.jpg")}, "content_type": "multipart/form-data"}, "no_file"),
        ({"data": {"file": "a form field, not a file"}, "content_type": "multipart/form-data"}, "no_file"),
        ({"data": {"file": (io.BytesIO(b""), "")}, "content_type": "multipart/form-data"}, "no_file"),  # nothing chosen
        ({"json": {"file": "aGVsbG8="}}, "no_file"),
        ({"data": b"\xff\xd8\xff raw bytes", "content_type": "image/jpeg"}, "no_file"),
    ],
    ids=["no-fields", "wrong-field", "text-field", "browser-empty-part", "json-body", "raw-body"],
)
def test_missing_file_is_400(client, kwargs, code):
    r = client.post("/predict", **kwargs)
    assert r.status_code == 400
    assert r.json["error"]["code"] == code and "'file'" in r.json["error"]["message"]


def test_two_files_on_predict_is_400(client, smear):
    r = client.post(
        "/predict",
        data={"file": [(io.BytesIO(smear), "a.jpg"), (io.BytesIO(smear), "b.jpg")]},
        content_type="multipart/form-data",
    )
    assert r.status_code == 400 and r.json["error"]["code"] == "too_many_files"
    assert "/api/v1/predict" in r.json["error"]["message"]


def test_upload_over_the_default_limit_is_413_naming_the_per_file_limit(client):
    r = upload(client, b"\xff\xd8\xff" + b"\x00" * (21 * 2**20))
    assert r.status_code == 413
    error = r.json["error"]
    assert error["code"] == "file_too_large" and error["limit_bytes"] == MAX_BYTES == 20 * 2**20
    assert error["message"].startswith("The file is 21 MiB; at most 20 MiB are accepted per file.")
    just_over = upload(client, b"\xff\xd8\xff" + b"\x00" * (20 * 2**20)).json["error"]  # under the body limit
    assert just_over["code"] == "file_too_large"
    assert just_over["message"] == size_limit_message(20 * 2**20 + 3, MAX_BYTES, "file")
    assert "20,971,523 bytes" in just_over["message"]  # not "20 MiB; at most 20 MiB"


def test_upload_limit_is_configurable(client, app, smear, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_FILE_BYTES", len(smear) // 2)
    r = upload(client, smear)
    assert r.status_code == 413 and r.json["error"]["code"] == "file_too_large"
    (entry,) = upload(client, smear, field="files", path="/api/v1/predict").json
    assert entry["valid"] is False and entry["code"] == "file_too_large" and "per file" in entry["reason"]


def test_batch_takes_several_files_each_under_the_per_file_limit(client):
    """9.5 + 9.5 + 4 MiB: over one file's limit together, but each file is allowed and is judged on its own."""
    files = [
        (f"{k}.jpg", b"\xff\xd8\xff" + bytes(n)) for k, n in enumerate([int(9.5 * 2**20), int(9.5 * 2**20), 4 * 2**20])
    ]
    body, content_type = multipart("files", files)
    r = client.post("/api/v1/predict", data=body, content_type=content_type)
    assert r.status_code == 200, r.json
    assert [(e["file"], e["code"]) for e in r.json] == [
        ("0.jpg", "unreadable"),
        ("1.jpg", "unreadable"),
        ("2.jpg", "unreadable"),
    ]


def test_batch_judges_an_oversize_file_as_its_own_entry(client, app, smear, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_FILE_BYTES", len(smear) + 10)
    body, content_type = multipart("files", [("ok.jpg", smear), ("big.jpg", smear + bytes(100)), ("ok2.jpg", smear)])
    r = client.post("/api/v1/predict", data=body, content_type=content_type)
    assert r.status_code == 200
    assert [e["valid"] for e in r.json] == [True, False, True]
    assert r.json[1]["code"] == "file_too_large"
    assert r.json[1]["reason"] == size_limit_message(len(smear) + 100, len(smear) + 10, "file")


@pytest.mark.parametrize(
    "body",
    [
        b"".join(b'--xx\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i for i in range(1500)),
        b'--xx\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + b"a" * 600_000 + b"\r\n",
    ],
    ids=["too-many-parts", "huge-text-field"],
)
def test_form_limits_are_413_with_their_own_code(client, body):
    r = client.post("/predict", data=body + b"--xx--\r\n", content_type="multipart/form-data; boundary=xx")
    assert r.status_code == 413 and r.json["error"]["code"] == "form_too_large"


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"abc", "multipart/form-data"),
        (
            b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\nabc',
            "multipart/form-data; boundary=xx",
        ),
        (b"file=abc", "application/x-www-form-urlencoded"),
    ],
    ids=["no-boundary", "unterminated", "urlencoded"],
)
def test_malformed_forms_are_400(client, body, content_type):
    r = client.post("/predict", data=body, content_type=content_type)
    assert r.status_code == 400 and r.json["error"]["code"] == "no_file"


def test_wrong_method_and_unknown_route_are_json(client):
    r = client.get("/predict")
    assert r.status_code == 405 and r.json["error"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]
    r = client.get("/no/such/page")
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"


def test_unexpected_failure_is_a_bare_json_500(model_path):
    app = create_app({"MODEL_PATH": str(model_path), "ORT_THREADS": 1, "WARM_UP": False})

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    r = app.test_client().get("/boom")
    assert r.status_code == 500
    assert r.json == {
        "error": {
            "code": "internal_error",
            "message": "The server failed to process this request; the error was logged.",
        }
    }
    assert "secret" not in r.get_data(as_text=True)
    assert r.headers["X-Content-Type-Options"] == "nosniff"


# --- POST /api/v1/predict -------------------------------------------------------------------------------------------
def test_batch_returns_one_entry_per_file_in_order(client, smear):
    files = [
        (io.BytesIO(smear), "smear.jpg"),
        (io.BytesIO(b"garbage"), "garbage.jpg"),
        (io.BytesIO(blank_white()), "white.png"),
        (io.BytesIO(b""), "empty.jpg"),
        (io.BytesIO(smear), "again.jpg"),
    ]
    r = client.post("/api/v1/predict", data={"files": files}, content_type="multipart/form-data")
    assert r.status_code == 200
    out = r.json
    assert [e["file"] for e in out] == ["smear.jpg", "garbage.jpg", "white.png", "empty.jpg", "again.jpg"]
    assert [e["valid"] for e in out] == [True, False, False, False, True]
    assert out[0]["model"]["name"] and set(out[0]["timing_ms"]) >= {"inference", "total"}
    assert out[1]["code"] == "unreadable" and out[3]["code"] == "empty_file"
    assert out[2]["reason"] and out[2]["checks"]
    assert out[0]["probabilities"] == out[4]["probabilities"]


def test_batch_of_one_matches_predict(client, smear):
    one = upload(client, smear).json
    (batch,) = upload(client, smear, field="files", path="/api/v1/predict").json
    drop = ("timing_ms",)
    assert {k: v for k, v in batch.items() if k not in drop} == {k: v for k, v in one.items() if k not in drop}


def test_batch_without_files_is_400(client, smear):
    r = client.post("/api/v1/predict", data={}, content_type="multipart/form-data")
    assert r.status_code == 400 and r.json["error"]["code"] == "no_file" and "'files'" in r.json["error"]["message"]
    r = upload(client, smear, field="file", path="/api/v1/predict")  # the single-image field name
    assert r.status_code == 400


def test_batch_file_count_is_limited(client, app, smear, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_FILES", 2)
    files = [(io.BytesIO(smear), f"{k}.jpg") for k in range(3)]
    r = client.post("/api/v1/predict", data={"files": files}, content_type="multipart/form-data")
    assert r.status_code == 400 and r.json["error"]["code"] == "too_many_files"


def test_batch_over_the_request_limit_is_413_naming_the_per_request_limit(client, app, smear, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_REQUEST_BYTES", 3 * len(smear))
    files = [(io.BytesIO(smear), f"{k}.jpg") for k in range(4)]
    r = client.post("/api/v1/predict", data={"files": files}, content_type="multipart/form-data")
    assert r.status_code == 413
    error = r.json["error"]
    assert error["code"] == "request_too_large" and error["limit_bytes"] == 3 * len(smear)
    assert "per request" in error["message"] and "several requests" in error["message"]


# --- health, model card, OpenAPI ------------------------------------------------------------------------------------
def test_health(client, app):
    r = client.get("/api/v1/health")
    assert r.status_code == 200
    assert r.json == {"status": "ok", "model": app.extensions[PREDICTOR_KEY].info}


def test_health_is_503_without_a_model(app, monkeypatch):
    monkeypatch.delitem(app.extensions, PREDICTOR_KEY)
    r = app.test_client().get("/api/v1/health")
    assert r.status_code == 503 and r.json["error"]["code"] == "model_not_loaded"


def test_model_card(client, app):
    r = client.get("/api/v1/model")
    assert r.status_code == 200 and r.json == app.extensions[PREDICTOR_KEY].card
    assert r.json["intended_use"]


def test_openapi_describes_every_route_and_status(client, app):
    r = client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    spec = r.json
    assert spec["openapi"].startswith("3.1")
    routes = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), m.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for m in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, m) for path, ops in spec["paths"].items() for m in ops}
    assert routes == documented
    assert set(spec["paths"]["/predict"]["post"]["responses"]) == {
        "200",
        "400",
        "413",
        "415",
        "422",
        "500",
        "501",
        "503",
    }
    assert set(spec["paths"]["/api/v1/predict"]["post"]["responses"]) == {"200", "400", "413", "500", "501", "503"}
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', r.get_data(as_text=True)))
    assert refs <= set(spec["components"]["schemas"])


def test_openapi_says_what_each_route_does_with_sizes_and_empty_files(client, app):
    spec = client.get("/api/v1/openapi.json").json
    one = {k: v["description"] for k, v in spec["paths"]["/predict"]["post"]["responses"].items()}
    many = {k: v["description"] for k, v in spec["paths"]["/api/v1/predict"]["post"]["responses"].items()}
    assert "`empty_file`" in one["400"] and "`file_too_large`" in one["413"] and "50 megapixels" in one["413"]
    assert "20 MiB" in one["413"]
    # the batch route answers an empty file, an oversize file and a > 50 MP image as entries, not error statuses
    assert "empty_file" not in many["400"] and "megapixels" not in many["413"]
    assert all(code in many["200"] for code in ("`empty_file`", "`file_too_large`", "`too_large`"))
    assert "`request_too_large`" in many["413"] and "64 MiB" in many["413"] and "20 MiB" in many["413"]
    assert "over_time_budget" in one["503"] and "over_time_budget" in many["503"]


def test_openapi_documents_explain(client):
    spec = client.get("/api/v1/openapi.json").json
    for path in ("/predict", "/api/v1/predict"):
        op = spec["paths"][path]["post"]
        params = {p["name"]: p for p in op["parameters"]}
        assert set(params) == {"explain", "class"} and all(p["in"] == "query" for p in params.values())
        assert all(k in params["class"]["description"] for k in CLASS_KEYS)
        assert "Mid Stage" in params["class"]["description"] and "Implies `explain`" in params["class"]["description"]
        assert all(v in params["explain"]["description"] for v in ("`1`", "`true`", "`yes`"))
        assert "bad_class" in op["responses"]["400"]["description"]
    schemas = spec["components"]["schemas"]
    assert schemas["Prediction"]["properties"]["explanation"] == {"$ref": "#/components/schemas/Explanation"}
    assert "explanation" not in schemas["Prediction"]["required"]
    assert set(schemas["Explanation"]["required"]) == set(schemas["Explanation"]["properties"])
    assert "explain" in schemas["Timing"]["properties"]


# --- headers on every response --------------------------------------------------------------------------------------
RESPONSES = {
    "page": lambda c, s: c.get("/"),
    "prediction": lambda c, s: upload(c, s),
    "415": lambda c, s: upload(c, b"garbage"),
    "422": lambda c, s: upload(c, blank_white()),
    "413": lambda c, s: upload(c, b"\x00" * (21 * 1024 * 1024)),
    "404": lambda c, s: c.get("/nope"),
    "health": lambda c, s: c.get("/api/v1/health"),
    "batch": lambda c, s: upload(c, s, field="files", path="/api/v1/predict"),
}


@pytest.mark.parametrize("name", RESPONSES)
def test_security_headers_on_every_response(client, smear, name):
    r = RESPONSES[name](client, smear)
    h = r.headers
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Cache-Control"] == "no-store"
    assert h["X-Frame-Options"] == "DENY"
    csp = h["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "unsafe" not in csp
    if name == "page":
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "img-src 'self' blob: data:;" in csp  # the preview (blob:) and the Grad-CAM overlay (data:) only
    else:
        assert csp.startswith("default-src 'none'") and "script-src" not in csp


def test_static_files_get_the_safety_headers_and_may_be_cached(client):
    with client.get("/static/app.js") as r:
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "no-store" not in r.headers.get("Cache-Control", "")


# --- the factory and serve() ----------------------------------------------------------------------------------------
def test_threads_come_from_the_environment_serve_sets(model_path, monkeypatch):
    monkeypatch.setenv("LEUKOSTAGE_ORT_THREADS", "1")  # what `serve` sets for each worker: cores // workers
    app = create_app({"MODEL_PATH": str(model_path), "WARM_UP": False})
    options = app.extensions[PREDICTOR_KEY].session.get_session_options()
    assert options.intra_op_num_threads == 1


def test_config_from_environment(model_path, monkeypatch):
    monkeypatch.setenv("LEUKOSTAGE_MAX_FILE_BYTES", "12345")
    monkeypatch.setenv("LEUKOSTAGE_MAX_REQUEST_BYTES", "67890")
    app = create_app({"MODEL_PATH": str(model_path), "WARM_UP": False})
    assert (app.config["MAX_FILE_BYTES"], app.config["MAX_REQUEST_BYTES"]) == (12345, 67890)


def test_factory_refuses_bad_config(model_path, tmp_path):
    with pytest.raises(ValueError, match="expected one of default, paper"):
        create_app({"MODEL_PATH": str(model_path), "VALIDATION_PRESET": "lenient"})
    with pytest.raises(FileNotFoundError, match="not found"):
        create_app({"MODEL_PATH": str(tmp_path / "none.onnx")})


@pytest.mark.parametrize("workers, cores, threads", [(1, 2, 2), (2, 2, 1), (4, 2, 1), (3, 8, 2), (1, 1, 1)])
def test_threads_per_worker_do_not_oversubscribe(workers, cores, threads):
    assert threads_per_worker(workers, cores) == threads
    assert workers * threads <= max(cores, workers)


def test_gunicorn_options():
    opts = gunicorn_options("127.0.0.1", 8000, 3)
    assert opts["bind"] == "127.0.0.1:8000" and opts["workers"] == 3
    assert opts["preload_app"] is False  # the model is loaded in each worker, after the fork
    assert bind_address("::1", 8000) == "[::1]:8000"
    # the app's own time budget answers (JSON 503) before gunicorn's timeout kills a worker; its errors are JSON too
    assert opts["timeout"] >= REQUEST_BUDGET_S + 30 and opts["timeout"] == worker_timeout_s(REQUEST_BUDGET_S)
    assert opts["worker_class"] == "leukostage.web.server.JsonErrorWorker"


def test_worker_timeout_follows_the_request_budget(monkeypatch):
    monkeypatch.setenv("LEUKOSTAGE_REQUEST_BUDGET_S", "100")
    assert gunicorn_options("127.0.0.1", 8000, 1)["timeout"] > 100


def test_serve_refuses_bad_arguments(model_path, tmp_path):
    with pytest.raises(ValueError, match="interactive debugger"):
        serve(host="0.0.0.0", model=str(model_path), debug=True)
    with pytest.raises(ValueError, match="at least 1"):
        serve(workers=0, model=str(model_path))
    with pytest.raises(ValueError, match="not found; pass --model"):
        serve(model=str(tmp_path / "missing.onnx"))


def test_cli_serve_reports_a_missing_model(tmp_path, capsys):
    assert cli.main(["serve", "--model", str(tmp_path / "missing.onnx")]) == 2
    assert "not found" in capsys.readouterr().err


def test_serving_path_never_imports_torch(model_path):
    code = (
        "import sys\n"
        "from leukostage.web import create_app\n"
        "from leukostage import cli\n"
        f"app = create_app({{'MODEL_PATH': {str(model_path)!r}, 'ORT_THREADS': 1}})\n"
        "app.test_client().get('/api/v1/health')\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- issue 18: a refusal whose cause is known keeps its reason and how the picture was taken -------------------------
def test_a_quality_refusal_answers_422_with_its_reason_and_capture(client, monkeypatch):
    """``/predict`` passes the validator's ``capture`` into the 422 body (the page says "Photo through the eyepiece")
    and ``/api/v1/predict`` keeps the whole refusal. The validator that says ``out_of_focus`` is built on another
    branch; here a real refusal (a blank white picture) is given that code, reason and capture, the one fault this
    branch cannot cause."""
    from dataclasses import replace

    from leukostage.web import uploads as uploads_module

    reason = "The picture is out of focus (sharpness 3.1, sharp fields measure at least 12.0). Refocus and retake."
    capture = {"mode": "eyepiece", "background_level": 231.0, "dark_level": 9.0, "clipped_share": 0.0}
    real = uploads_module.analyse_bytes

    def out_of_focus(*args, **kwargs):
        analysis = real(*args, **kwargs)
        assert analysis.result["valid"] is False  # a real refusal, given the new code
        result = {**analysis.result, "code": "out_of_focus", "reason": reason, "capture": capture}
        return replace(analysis, result=result)

    monkeypatch.setattr(uploads_module, "analyse_bytes", out_of_focus)
    r = upload(client, blank_white())
    assert r.status_code == 422
    assert r.json["error"]["code"] == "out_of_focus" and r.json["error"]["message"] == reason
    assert r.json["error"]["capture"] == capture and r.json["error"]["checks"]
    r = upload(client, blank_white(), field="files", path="/api/v1/predict")
    (entry,) = r.json
    assert r.status_code == 200 and entry["valid"] is False
    assert (entry["code"], entry["reason"], entry["capture"]) == ("out_of_focus", reason, capture)
