"""Shared fixtures: the real data folder (fails, not skips, under CI when missing) and the shipped model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from leukostage.predict import default_model_path


def pytest_addoption(parser):
    parser.addoption("--data", default=None, help="data folder (default: $LEUKOSTAGE_DATA or ../shared/data)")


@pytest.fixture(scope="session")
def data_dir(request) -> Path:
    path = Path(request.config.getoption("--data") or os.environ.get("LEUKOSTAGE_DATA", "../shared/data"))
    if not (path / "taleqani_all").is_dir():
        message = f"real data not found at {path} (set LEUKOSTAGE_DATA or --data)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def taleqani(data_dir) -> Path:
    return data_dir / "taleqani_all" / "original"


@pytest.fixture(scope="session")
def sample_smears(taleqani) -> dict[str, Path]:
    """One real image per class."""
    from leukostage.classes import CLASSES

    return {c.key: sorted((taleqani / c.folder).glob("*.jpg"))[0] for c in CLASSES}


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = default_model_path()
    if not path.is_file():
        pytest.fail(f"shipped model {path} is missing")
    return path


@pytest.fixture(scope="session")
def predictor(model_path):
    from leukostage.predict import Predictor

    return Predictor.load(model_path)
