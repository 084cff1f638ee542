"""Shared fixtures: the real data folder (fails, not skips, under CI when missing) and the shipped model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from leukostage.predict import default_model_path

pytest_plugins = ["cases_fixtures"]  # databases (SQLite and a real PostgreSQL), users and apps for tests/test_cases_*


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
def shipped_torch_model(model_path):
    """The shipped model as a torch module, rebuilt from its ONNX initializers and card (no checkpoint is shipped):
    lets torch references (autograd Grad-CAM, parity) run on the real trained weights in CI.

    Returns (model in eval mode, softmax temperature from the card).
    """
    torch = pytest.importorskip("torch")
    import json

    import onnx
    from onnx import numpy_helper

    from leukostage.model import build_model, config_from_dict
    from leukostage.predict import card_path_for

    card = json.loads(card_path_for(model_path).read_text())
    model = build_model(config_from_dict(card["architecture"]))
    weights = {i.name.removeprefix("model."): numpy_helper.to_array(i) for i in onnx.load(model_path).graph.initializer}
    state = {k: torch.from_numpy(weights[k].copy()) for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    model.load_state_dict(state, strict=False)
    return model.eval(), float(card["calibration"]["temperature"])


@pytest.fixture(scope="session")
def predictor(model_path):
    from leukostage.predict import Predictor

    return Predictor.load(model_path)
