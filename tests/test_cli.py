import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from leukostage.cli import main


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leukostage.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, sample_smears):
    d = tmp_path_factory.mktemp("bad")
    good = sample_smears["mid"].read_bytes()
    (d / "corrupt.jpg").write_bytes(good[:600])
    (d / "text.jpg").write_text("definitely not a JPEG")
    (d / "empty_dir").mkdir()
    return d


def test_predict_json_contract_in_input_order_with_failures(bad_inputs, sample_smears):
    files = [sample_smears["normal"], bad_inputs / "missing.png", bad_inputs / "corrupt.jpg",
             bad_inputs / "text.jpg", bad_inputs / "empty_dir", sample_smears["advanced"]]
    proc = run_cli("predict", "--json", *files)
    assert proc.returncode == 1  # some inputs failed
    results = json.loads(proc.stdout)
    assert [r["file"] for r in results] == [str(f) for f in files]
    assert [r["valid"] for r in results][1:5] == [False] * 4
    assert results[1]["code"] == "unreadable" and "No such file" in results[1]["reason"]
    assert results[2]["code"] == "unreadable" and "corrupt" in results[2]["reason"]
    assert results[3]["code"] == "unreadable" and "not an image" in results[3]["reason"]
    assert "no images" in results[4]["reason"]
    for r in (results[0], results[5]):
        if r["valid"]:
            assert {"label", "display_label", "dataset_label", "confidence", "probabilities"} <= set(r)
            assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_predict_exit_zero_and_readable_table(sample_smears, capsys):
    code = main(["predict", str(sample_smears["advanced"])])
    out = capsys.readouterr()
    assert str(sample_smears["advanced"]) in out.out
    assert "not a diagnosis" in out.err
    assert code in (0, 1)


def test_predict_never_imports_torch(sample_smears):
    code = ("import sys; from leukostage.cli import main; main(['predict', '--json', %r]); "
            "sys.exit(3 if 'torch' in sys.modules else 0)" % str(sample_smears["normal"]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_folder_input_expands_to_its_images(tmp_path, sample_smears):
    for key in ("normal", "early"):
        (tmp_path / f"{key}.jpg").write_bytes(sample_smears[key].read_bytes())
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((40, 40, 3), np.uint8))
    (tmp_path / "readme.txt").write_text("ignored")
    proc = run_cli("predict", "--json", tmp_path)
    assert [r["file"].rsplit("/", 1)[1] for r in json.loads(proc.stdout)] == ["early.jpg", "normal.jpg", "x.png"]


def test_unknown_model_path_is_a_clear_error(sample_smears, capsys):
    assert main(["predict", "--model", "/nope/m.onnx", str(sample_smears["normal"])]) == 2
    assert "not found" in capsys.readouterr().err
