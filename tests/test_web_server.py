"""`leukostage serve` start-up: what is wrong with the model, its card or the port is said in one line, before
gunicorn starts (issue 12, item 4: a missing card gave 55 lines of worker tracebacks and exit 3, a corrupt model 67,
a port in use 9 ERROR lines and no hint)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from web_server import HOST, LiveServer, free_port, post

from leukostage import cli
from leukostage.predict import card_path_for
from leukostage.web import server as server_module
from leukostage.web.server import access_log_target


def serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `leukostage serve` as a user would; it must exit by itself (a start-up failure)."""
    return subprocess.run(
        [sys.executable, "-m", "leukostage.cli", "serve", "--host", HOST, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_failure(r: subprocess.CompletedProcess, *words: str) -> str:
    out = r.stdout + r.stderr
    lines = [line for line in out.splitlines() if line.strip()]
    assert r.returncode == 2, out
    assert "Traceback" not in out and "Listening" not in out and len(lines) == 1, out
    assert lines[0].startswith("leukostage serve: error: ")
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def model_copy(model_path, tmp_path):
    """The shipped model copied elsewhere, without its card."""
    path = tmp_path / "copy.onnx"
    shutil.copy(model_path, path)
    return path


def test_a_model_without_its_card(model_copy):
    line = assert_one_line_failure(
        serve("--port", str(free_port()), "--model", str(model_copy)), "copy.card.json not found", "leukostage export"
    )
    assert str(model_copy) in line


def test_a_corrupt_model(model_path, model_copy):
    model_copy.write_bytes(b"not an onnx file" * 100)
    shutil.copy(card_path_for(model_path), card_path_for(model_copy))
    assert_one_line_failure(
        serve("--port", str(free_port()), "--model", str(model_copy)), str(model_copy), "ONNX", "re-export"
    )


def test_a_missing_model(tmp_path):
    assert_one_line_failure(
        serve("--port", str(free_port()), "--model", str(tmp_path / "none.onnx")), "not found", "--model"
    )


def test_a_port_in_use(model_path):
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_line_failure(
            serve("--port", str(port), "--model", str(model_path)), f"port {port}", "already in use", "--port"
        )


def test_a_host_that_is_not_this_machine(model_path):
    assert_one_line_failure(
        serve("--host", "192.0.2.1", "--port", str(free_port()), "--model", str(model_path)),
        "cannot listen on 192.0.2.1",
        "--host",
    )


# --- shutdown ---------------------------------------------------------------------------------------------------------
SHUTDOWN_CRASH_SIGNS = ("terminate called", "std::system_error", "free(): invalid pointer", "SIGABRT", "SIGKILL")


def test_a_server_that_served_stops_cleanly_on_sigterm(model_path, sample_smears, tmp_path):
    """Every worker used to abort at exit after serving ("terminate called after throwing an instance of
    'std::system_error'", "Worker ... was sent SIGABRT"): ONNX Runtime, loaded in the master to check the model, keeps
    thread state that a forked worker cannot tear down at interpreter exit. Stopped with SIGTERM after real
    predictions, the log must show each worker exiting and the master shutting down, and nothing crashing."""
    log = tmp_path / "serve.log"
    image = sample_smears["early"].read_bytes()
    server = LiveServer(model_path, workers=2, log=log).start()
    try:
        workers = server.worker_pids()
        assert "onnxruntime" not in Path(f"/proc/{server.proc.pid}/maps").read_text()  # the master never loads it
        for _ in range(4):
            status, body = post(server.port, "/predict", "file", [("early.jpg", image)])
            assert status == 200 and body["label"] == "early", body
    finally:
        server.stop()
    text = log.read_text()
    assert server.proc.returncode == 0, text
    assert not [sign for sign in SHUTDOWN_CRASH_SIGNS if sign in text], text
    assert "Traceback" not in text, text
    for pid in workers:
        assert f"Worker exiting (pid: {pid})" in text, text
    assert "Shutting down: Master" in text, text
    assert '"POST /predict' not in text  # no access log unless asked for


# --- access log -------------------------------------------------------------------------------------------------------
SECRETS = ("ACC-SECRET", "PAT-SECRET", "PASS-SECRET")


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "value, target",
    [
        (None, None),
        ("", None),
        ("0", None),
        ("false", None),
        ("1", "-"),
        ("true", "-"),
        ("/var/log/a.log", "/var/log/a.log"),
    ],
)
def test_access_log_setting(value, target):
    assert access_log_target(value) == target


def test_serve_access_log_flag_reaches_gunicorn(monkeypatch, model_path):
    """``--access-log`` alone logs to stdout, ``--access-log FILE`` to a file; gunicorn gets the safe logger either
    way (so an access log turned on through GUNICORN_CMD_ARGS is safe too)."""
    seen = {}
    monkeypatch.setattr(server_module.GunicornApp, "run", lambda self: seen.update(self.options))
    monkeypatch.setattr(server_module, "check_port", lambda host, port: None)
    monkeypatch.delenv("LEUKOSTAGE_ACCESS_LOG", raising=False)
    for argv, target in ((["--access-log"], "-"), (["--access-log", "/tmp/x.log"], "/tmp/x.log"), ([], None)):
        assert cli.main(["serve", "--model", str(model_path), *argv]) == 0
        assert seen["accesslog"] == target and seen["logger_class"] == "leukostage.web.server.AccessLogger"
    monkeypatch.setenv("LEUKOSTAGE_ACCESS_LOG", "1")
    assert cli.main(["serve", "--model", str(model_path)]) == 0 and seen["accesslog"] == "-"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_access_log_names_routes_without_queries_or_patient_data(
    instance, people, model_path, sample_smears, tmp_path
):
    """Turned on with LEUKOSTAGE_ACCESS_LOG (here a file): one line per request with the path, never a query string,
    a form field, a referer, a token, or whatever a client typed into an unknown path."""
    access = tmp_path / "access.log"
    log = tmp_path / "serve.log"
    token = {"Authorization": f"Bearer {people.tech}"}
    with LiveServer(model_path, workers=1, env={"LEUKOSTAGE_ACCESS_LOG": str(access)}, log=log) as server:
        port = server.port
        status, _ = post(
            port,
            "/predict?accession=ACC-SECRET-1&patient=PAT-SECRET-1",
            "file",
            [("ACC-SECRET-name.jpg", sample_smears["mid"].read_bytes())],
        )
        assert status == 200
        body = json.dumps({"accession": "ACC-SECRET-2", "patient_ref": "Patient/PAT-SECRET-2"}).encode()
        status, created = request(port, "POST", "/api/v1/cases", body, {**token, "Content-Type": "application/json"})
        assert status == 201, created
        case_id = json.loads(created)["id"]
        assert request(port, "GET", f"/api/v1/cases/{case_id}", headers=token)[0] == 200
        assert request(port, "GET", "/api/v1/cases?q=ACC-SECRET-2&per_page=5", headers=token)[0] == 200
        assert request(port, "GET", "/cases/ACC-SECRET-3", headers=token)[0] == 404
        assert request(port, "GET", "/api/v1/cases/%0aACC-SECRET-4", headers=token)[0] == 404
        assert request(port, "GET", "/static/ACC-SECRET-5.js")[0] == 404
        form = b"username=ACC-SECRET-6&password=PASS-SECRET-6"
        status, _ = request(
            port,
            "POST",
            "/login",
            form,
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "Referer": f"http://{HOST}:{port}/cases?q=ACC-SECRET-7",
                "Cookie": "session=PAT-SECRET-8",
            },
        )
        for raw in (  # malformed request lines: gunicorn refuses them and its error log used to quote them
            b"GET /cases?q=ACC-SECRET-9\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /cases/PAT-SECRET-10 HTTP/1.1 junk\r\nHost: x\r\n\r\n",
        ):
            with socket.create_connection((HOST, port), timeout=30) as sock:
                sock.sendall(raw)
                assert sock.recv(64).startswith(b"HTTP/1.1 400")
    assert log.read_text().count("Invalid request from ip=") == 2
    text = access.read_text()
    lines = text.splitlines()
    assert len(lines) == 9, text
    expected = [
        '"POST /predict HTTP/1.1" 200',
        '"POST /api/v1/cases HTTP/1.1" 201',
        f'"GET /api/v1/cases/{case_id} HTTP/1.1" 200',
        '"GET /api/v1/cases HTTP/1.1" 200',
        '"GET <unmatched> HTTP/1.1" 404',
        '"GET <unmatched> HTTP/1.1" 404',
        '"GET /static/<path:filename> HTTP/1.1" 404',
        f'"POST /login HTTP/1.1" {status}',
    ]
    for line, part in zip(lines[1:], expected, strict=True):  # the first: the health check that LiveServer polls
        assert part in line, (part, line)
    assert lines[0].startswith(HOST) and '"GET /api/v1/health HTTP/1.1" 200' in lines[0]
    everything = text + log.read_text()
    assert not [s for s in SECRETS if s in everything], everything
    assert "?" not in text and people.tech not in everything


def test_the_development_server_logs_requests_without_queries(model_path, tmp_path):
    """``serve --debug`` (Werkzeug) logs every request line; it must be the same safe line."""
    port = free_port()
    with open(tmp_path / "debug.log", "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "leukostage.cli",
                "serve",
                "--debug",
                "--host",
                HOST,
                "--port",
                str(port),
                "--model",
                str(model_path),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if request(port, "GET", "/api/v1/health?accession=ACC-SECRET-1")[0] == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "debug.log").read_text()
                time.sleep(0.2)
        assert request(port, "GET", "/cases/ACC-SECRET-2")[0] == 404
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the session we started (the reloader's child too)
        proc.wait(timeout=30)
    text = (tmp_path / "debug.log").read_text()
    assert '"GET /api/v1/health HTTP/1.1" 200' in text and '"GET <unmatched> HTTP/1.1" 404' in text, text
    assert "SECRET" not in text and "?" not in text.split("Running on")[-1], text
