"""The package as a new user gets it: build the wheel, install it into a fresh venv (base dependencies only, no
torch), and predict and serve with the model and validator shipped inside it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "leukostage"
pytestmark = pytest.mark.slow


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)


def user_env() -> dict:
    """The environment of a user who has never heard of our variables (no $LEUKOSTAGE_MODEL / _DATA / _VALIDATOR)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LEUKOSTAGE") and k != "PYTHONPATH"}


def tracked_files() -> list[str]:
    r = run(["git", "-C", ROOT, "ls-files", "--cached", "--others", "--exclude-standard"])
    assert r.returncode == 0, r.stderr
    return [f for f in r.stdout.splitlines() if (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the checkout's files, as a clean clone would be: a stale build/ folder in the working
    tree cannot leak deleted files into it, and the tree is left untouched."""
    src, out = tmp_path_factory.mktemp("clone"), tmp_path_factory.mktemp("wheel")
    for f in tracked_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    # No build isolation: the build backend (setuptools) is already in the test venv, so nothing is fetched.
    r = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, src])
    assert r.returncode == 0, r.stderr[-2000:]
    (path,) = out.glob("leukostage-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel and its base dependencies (from pip's local caches and indexes)."""
    venv = tmp_path_factory.mktemp("venv")
    assert run([sys.executable, "-m", "venv", "--without-pip", venv]).returncode == 0
    # Drive the test venv's pip at the new interpreter: no pip bootstrap in the new venv, same caches.
    r = run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", wheel], env=user_env())
    assert r.returncode == 0, r.stderr[-2000:]
    return venv


def test_wheel_carries_every_file_the_package_reads(wheel):
    """Every tracked non-Python file under src/leukostage (model, card, validator.json, templates, static) is in
    the wheel: package data is not only what an editable install happens to see. The float graph the served int8
    model was quantised from is the tests' reference, not served: it stays out of the wheel."""
    wanted = {
        str(Path(f).relative_to("src"))
        for f in tracked_files()
        if f.startswith("src/leukostage/") and not f.endswith(".py")
    }
    assert {"leukostage/validator.json", "leukostage/models/lite0.onnx", "leukostage/models/lite0.card.json"} <= wanted
    assert any(f.startswith("leukostage/web/templates/") for f in wanted)
    assert any(f.startswith("leukostage/web/static/") for f in wanted)
    reference = {f for f in wanted if f.endswith(("-float.onnx", "-float.card.json"))}
    names = set(zipfile.ZipFile(wheel).namelist())
    assert wanted - reference <= names, f"missing from the wheel: {sorted(wanted - reference - names)}"
    assert not reference & names, f"float references in the wheel: {sorted(reference & names)}"


def test_installed_wheel_predicts_with_its_own_model(installed, sample_smears, tmp_path):
    bin_ = installed / "bin"
    r = run([bin_ / "leukostage", "predict", "--json", sample_smears["advanced"]], cwd=tmp_path, env=user_env())
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = json.loads(r.stdout)
    assert row["valid"] and row["label"] in ("normal", "early", "mid", "advanced", "uncertain")
    assert row["validator"]["name"] == "validator.json (packaged)"
    where = run(
        [
            bin_ / "python",
            "-c",
            "import leukostage.predict as p, importlib.util as u; "
            "print(p.default_model_path()); print(u.find_spec('torch') is None)",
        ],
        cwd=tmp_path,
        env=user_env(),
    )
    model, no_torch = where.stdout.split()
    assert Path(model).is_relative_to(installed) and no_torch == "True"  # the wheel's copy, and the base install


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_installed_wheel_serves(installed, tmp_path):
    """What `make run` does, from the wheel: migrate the (new, empty) case database, then serve."""
    r = run([installed / "bin" / "leukostage", "db", "upgrade"], cwd=tmp_path, env=user_env())
    assert r.returncode == 0, r.stderr
    port = free_port()
    proc = subprocess.Popen(
        [installed / "bin" / "leukostage", "serve", "--port", str(port), "--workers", "1"],
        cwd=tmp_path,
        env=user_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        health = None
        for _ in range(240):  # up to 2 min on a loaded machine; returns as soon as the worker answers
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2) as r:
                    health = json.loads(r.read())
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        assert health is not None and health["status"] == "ok"
        assert health["model"]["name"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        proc.stderr.close()
