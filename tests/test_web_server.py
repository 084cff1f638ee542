"""`leukostage serve` start-up: what is wrong with the model, its card or the port is said in one line, before
gunicorn starts (issue 12, item 4: a missing card gave 55 lines of worker tracebacks and exit 3, a corrupt model 67,
a port in use 9 ERROR lines and no hint)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from web_server import HOST, LiveServer, free_port, post

from leukostage.predict import card_path_for


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
    image = sample_smears["mid"].read_bytes()
    server = LiveServer(model_path, workers=2, log=log).start()
    try:
        workers = server.worker_pids()
        assert "onnxruntime" not in Path(f"/proc/{server.proc.pid}/maps").read_text()  # the master never loads it
        for _ in range(4):
            status, body = post(server.port, "/predict", "file", [("mid.jpg", image)])
            assert status == 200 and body["label"] == "mid", body
    finally:
        server.stop()
    text = log.read_text()
    assert server.proc.returncode == 0, text
    assert not [sign for sign in SHUTDOWN_CRASH_SIGNS if sign in text], text
    assert "Traceback" not in text, text
    for pid in workers:
        assert f"Worker exiting (pid: {pid})" in text, text
    assert "Shutting down: Master" in text, text
