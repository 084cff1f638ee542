"""Shared fixtures: the real data folder (fails, not skips, under CI when missing) and the shipped model."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
from missing import missing, not_run_line

from leukostage.predict import default_model_path

pytest_plugins = ["cases_fixtures"]  # databases (SQLite and a real PostgreSQL), users and apps for tests/test_cases_*


def require(module: str):
    """Import a declared dependency (torch from the train extra, Pillow via the test extra). Missing, it skips a
    local run but fails under CI (CI=true): a broken install must not pass as a clean run of fewer tests."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing(module.partition(".")[0], f"a declared dependency that cannot be imported ({exc}); run `make setup`")


def pytest_unconfigure(config):
    """The run's last line, after pytest's own summary: how many tests were skipped for something missing."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    line = not_run_line(reporter.stats.get("skipped", [])) if reporter is not None else None
    if line:
        reporter.write_line(line, yellow=True, bold=True)


def pytest_addoption(parser):
    parser.addoption("--data", default=None, help="data folder (default: $LEUKOSTAGE_DATA or ../shared/data)")


@pytest.fixture(scope="session")
def data_dir(request) -> Path:
    path = Path(request.config.getoption("--data") or os.environ.get("LEUKOSTAGE_DATA", "../shared/data"))
    if not (path / "taleqani_all").is_dir():
        missing("real data", f"no taleqani_all folder in {path} (set LEUKOSTAGE_DATA or --data)")
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
def foreign_cell(data_dir) -> Path:
    """A real blood cell from another laboratory (a lymphocyte of the PBC dataset): a valid smear that the shipped
    model answers ``uncertain``, ``outside_training_domain``. It is the first PBC lymphocyte (sorted by name) whose
    red cells the capture layer cannot measure, so it is not refused for its magnification (most PBC cells are:
    their red cells measure 3-9x the training scale)."""
    return data_dir / "pbc_sample" / "lymphocyte" / "LY_175082.jpg"


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = default_model_path()
    if not path.is_file():
        pytest.fail(f"shipped model {path} is missing")
    return path


@pytest.fixture(scope="session")
def reference_model_path(model_path) -> Path:
    """The float graph the shipped model was quantised from (its card names the file beside it); the shipped file
    itself when it was not quantised. Torch references (parity, autograd Grad-CAM) are checked against this one;
    the int8 file against it in test_quantize."""
    import json

    from leukostage.predict import card_path_for

    reference = json.loads(card_path_for(model_path).read_text()).get("quantization", {}).get("reference")
    if reference is None:
        return model_path
    path = model_path.parent / reference["file"]
    if not path.is_file():
        pytest.fail(
            f"the shipped model's float reference {path} is missing (it is not in a wheel: run the tests "
            "from the repository)"
        )
    return path


@pytest.fixture(scope="session")
def shipped_torch_model(reference_model_path):
    """The shipped model as a torch module, rebuilt from its float reference's ONNX initializers and card (no
    checkpoint is shipped): lets torch references (autograd Grad-CAM, parity) run on the real trained weights in CI.

    Returns (model in eval mode, softmax temperature from the card).
    """
    torch = require("torch")
    import json

    import onnx
    from onnx import numpy_helper

    from leukostage.predict import card_path_for
    from leukostage.training.model import build_model, config_from_dict

    card = json.loads(card_path_for(reference_model_path).read_text())
    model = build_model(config_from_dict(card["architecture"]))
    weights = {
        i.name.removeprefix("model."): numpy_helper.to_array(i)
        for i in onnx.load(reference_model_path).graph.initializer
    }
    state = {
        k: torch.from_numpy(weights[k].copy()) for k in model.state_dict() if not k.endswith("num_batches_tracked")
    }
    model.load_state_dict(state, strict=False)
    return model.eval(), float(card["calibration"]["temperature"])


@pytest.fixture(scope="session")
def predictor(model_path):
    from leukostage.predict import Predictor

    return Predictor.load(model_path)


@pytest.fixture
def model_with_card(tmp_path, model_path):
    """Copy the shipped model into tmp_path with its card changed by ``edit(card) -> card`` (None: no card)."""
    import json

    from leukostage.predict import card_path_for

    def make(edit, name: str = "variant") -> Path:
        onnx = tmp_path / f"{name}.onnx"
        onnx.write_bytes(model_path.read_bytes())
        card = edit(json.loads(card_path_for(model_path).read_text()))
        if card is not None:
            card_path_for(onnx).write_text(json.dumps(card))
        return onnx

    return make
