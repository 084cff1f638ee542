"""Missing data (or a dependency, PostgreSQL, the browser) is loud: a run without it ends with one line saying how many
tests did not run and why, and under CI=true those tests fail. Checked by running pytest, with this suite's own
conftest, on a tiny test file with LEUKOSTAGE_DATA pointing at an empty folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
TINY = """
def test_needs_the_data(data_dir):
    pass


def test_needs_an_image(sample_smears):
    pass


def test_needs_nothing():
    pass


def test_needs_a_dependency():
    from conftest import require

    require("a_module_that_is_not_installed")
"""


@pytest.fixture
def tiny_suite(tmp_path) -> Path:
    suite = tmp_path / "suite"
    suite.mkdir()
    for name in ("conftest.py", "missing.py", "cases_fixtures.py"):
        shutil.copy(HERE / name, suite / name)
    (suite / "test_tiny.py").write_text(TINY)
    (tmp_path / "empty").mkdir()
    return suite


def pytest_run(*args: str, cwd: Path, env: dict, timeout: int = 180) -> subprocess.CompletedProcess:
    """A pytest run in a child process, as ``make test`` would start it."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_tiny(suite: Path, ci: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["LEUKOSTAGE_DATA"] = str(suite.parent / "empty")
    if ci:
        env["CI"] = "true"
    return pytest_run(str(suite), cwd=suite, env=env)


def test_a_run_without_the_data_ends_with_one_line_saying_what_did_not_run(tiny_suite):
    r = run_tiny(tiny_suite, ci=False)
    assert r.returncode == 0, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("NOT RUN: 3 tests did not run"), r.stdout
    assert f"2 for real data: no taleqani_all folder in {tiny_suite.parent / 'empty'}" in last, last
    assert "1 for a_module_that_is_not_installed: a declared dependency" in last, last
    assert "1 passed, 3 skipped" in r.stdout


def test_under_ci_missing_data_fails_the_run(tiny_suite):
    r = run_tiny(tiny_suite, ci=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 failed, 1 passed, 2 errors" in r.stdout, r.stdout  # setup errors (fixtures) and a failure (require)
    assert "not run, missing real data" in r.stdout and "NOT RUN" not in r.stdout


def test_a_complete_run_has_no_such_line(tiny_suite, data_dir):
    r = pytest_run(
        str(tiny_suite / "test_tiny.py"),
        "-k",
        "data or image or nothing",
        cwd=tiny_suite,
        env={**os.environ, "LEUKOSTAGE_DATA": str(data_dir)},
    )
    assert r.returncode == 0 and "3 passed" in r.stdout and "NOT RUN" not in r.stdout, r.stdout


@pytest.fixture
def no_torch(tmp_path) -> Path:
    """A PYTHONPATH entry whose ``torch`` cannot be imported, as in an install without the train extra."""
    blocked = tmp_path / "no-torch" / "torch"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text('raise ImportError("torch is not installed (blocked for this test)")\n')
    return blocked.parent


def run_quantize_tests(no_torch: Path, ci: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(no_torch), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if ci:
        env["CI"] = "true"
    return pytest_run(
        str(HERE / "test_quantize.py"),
        "-k",
        "shipped or exact or only_the_backbone",
        cwd=HERE.parent,
        env=env,
        timeout=600,
    )


def test_without_torch_only_the_tests_that_need_it_skip(no_torch, data_dir):
    """test_quantize once skipped as a whole without torch, taking the shipped int8 model's tests (no torch needed)
    with it, even under CI."""
    r = run_quantize_tests(no_torch, ci=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 passed, 1 skipped, 3 deselected" in r.stdout, r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("NOT RUN: 1 test did not run"), r.stdout
    assert "1 for torch" in r.stdout
    ci = run_quantize_tests(no_torch, ci=True)
    assert ci.returncode == 1 and "4 passed, 3 deselected, 1 error" in ci.stdout, ci.stdout
