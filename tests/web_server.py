"""Helpers for the end-to-end web tests: `leukostage serve` (gunicorn) on a free loopback port, and a small client.

Only 127.0.0.1 is ever contacted. The server runs in its own session, so stopping it ends its workers too.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from missing import missing

HOST = "127.0.0.1"


def smear_candidates(data_dir: Path) -> list[Path]:
    """Genuine smears, in order of preference, for tests that need one the validator accepts (it is still being
    calibrated: today BCCD fields pass and many Taleqani images do not)."""
    found = sorted((data_dir / "bccd_smears").glob("*.jpg"))[:3]
    found += sorted((data_dir / "pbc_sample").glob("*/*.jpg"))[:3]
    found += sorted((data_dir / "taleqani_all" / "original").glob("**/*.jpg"))[:3]
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def multipart(field: str, files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body with one part per (filename, bytes) in ``field``; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    chunks = []
    for name, data in files:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def post(port: int, path: str, field: str, files: list[tuple[str, bytes]], timeout: float = 30.0):
    """POST files; returns (status, parsed JSON body). Raises on any connection failure (a dropped connection)."""
    status, _, body = post_raw(port, path, field, files, timeout)
    return status, json.loads(body)


def post_raw(port: int, path: str, field: str, files: list[tuple[str, bytes]], timeout: float = 120.0):
    """POST files; returns (status, headers as a dict, raw body bytes), whatever the body is."""
    body, content_type = multipart(field, files)
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def get(port: int, path: str, timeout: float = 5.0):
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process, from /proc; ``field="VmHWM"`` gives its peak so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


class LiveServer:
    """``python -m leukostage.cli serve`` on a free port; ``start()`` returns once /api/v1/health answers 200."""

    def __init__(self, model: str | Path, workers: int = 1, env: dict | None = None, log: Path | None = None):
        self.model = str(model)
        self.workers = workers
        self.env = {**os.environ, **(env or {})}
        self.log = log
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._out = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 60.0) -> LiveServer:
        self._out = open(self.log, "wb") if self.log else None
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "leukostage.cli",
                "serve",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                "--model",
                self.model,
            ],
            env=self.env,
            stdout=self._out or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"leukostage serve exited with {self.proc.returncode}; see {self.log}")
            try:
                if get(self.port, "/api/v1/health", timeout=2)[0] == 200 and len(self.worker_pids()) == self.workers:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"leukostage serve did not become healthy in {timeout:.0f} s; see {self.log}")

    def worker_pids(self) -> list[int]:
        """gunicorn's worker processes (the children of the master we started)."""
        if self.proc is None:
            return []
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return sorted(int(p) for p in path.read_text().split()) if path.exists() else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # gunicorn: graceful shutdown of master and workers
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the session we started, by its id
                self.proc.wait(timeout=5)
        if self._out is not None:
            self._out.close()
            self._out = None

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


CHROMIUM = "/usr/bin/chromium"  # Debian's chromium (`make browser`); Playwright drives it
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@contextlib.contextmanager
def launch_chromium():
    """Debian's chromium through Playwright, headless: the browser fixture of every browser test module."""
    if not Path(CHROMIUM).is_file():
        missing("chromium", f"{CHROMIUM} is missing: run `make browser` (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright", "not installed: pip install -e '.[test]'")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


EXPECTED_4XX = re.compile(r"Failed to load resource: the server responded with a status of 4\d\d")  # a rejection


@contextlib.contextmanager
def watched_page(browser, base_url: str, width: int, timeout_ms: int, local_schemes: tuple[str, ...] = ("blob:",)):
    """A fresh browser context (no session) whose page collects ``problems`` for the test to assert empty: console
    errors other than an expected 4xx rejection (CSP violations show there), page errors, and any request that
    leaves the server (aborted)."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(timeout_ms)
    pg.problems = []
    pg.on("console", lambda m: m.type == "error" and not EXPECTED_4XX.match(m.text) and pg.problems.append(m.text))
    pg.on("pageerror", lambda e: pg.problems.append(str(e)))

    def only_local(route):
        if route.request.url.startswith((base_url + "/", *local_schemes)):
            route.continue_()
        else:
            pg.problems.append(f"external request {route.request.url}")
            route.abort()

    pg.route("**/*", only_local)
    try:
        yield pg
    finally:
        context.close()
