"""Candidate runs of a capture recipe compared on the VALIDATION part only, as they would be served.

For each run's best.pt: its served float graph (temperature and domain bank, as ``export`` makes them), the served
decision's thresholds chosen on the val part and its shifted views through the gate (as ``export`` chooses them),
what those thresholds answer, and the shortcut audit's Grad-CAM mass on cells on the val part. The test part is not
read. The shifted views do not depend on the model: they are made once and cached beside the runs.

    python experiments/capture_candidates.py runs/A runs/B src/leukostage/models/lite0.onnx [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np

from leukostage.domain import DOMAIN_OUTPUT
from leukostage.imaging import to_unit_range
from leukostage.predict import card_path_for
from leukostage.training.audit import run_audit
from leukostage.training.data import default_data_dir, reproduce_split
from leukostage.training.decision import choose_thresholds, served_summary, shifted_views
from leukostage.training.export import export_served, onnx_outputs
from leukostage.training.train import load_checkpoint


def candidate(path: Path, data: Path, work: Path) -> dict:
    """One run folder (its best.pt, exported here) or an already exported .onnx file (e.g. the shipped model)."""
    model = None
    if path.suffix == ".onnx":
        card = json.loads(card_path_for(path).read_text())
        training = card["training"]
        meta = {"split": training["split"], "seed": training["seed"], "fingerprint": training["data_fingerprint"]}
        size, model_file, epoch, logged = card["input"]["shape"][1], path, training["best_epoch"], None
    else:
        model_file = path / "best.pt"
        model, ckpt = load_checkpoint(model_file)
        meta, size, epoch = ckpt["meta"], ckpt["model_config"]["image_size"], ckpt["epoch"]
        logged = len((path / "log.csv").read_text().splitlines()) - 1
    ds, split, images = reproduce_split(data, meta["fingerprint"], meta["split"], meta["seed"], size)
    x_val, y_val = images[split["val"]], ds.labels[split["val"]]
    cache = work / "val-shifted-views.pkl"
    if cache.is_file():
        shifted = pickle.loads(cache.read_bytes())
    else:
        shifted = shifted_views(x_val, y_val)
        cache.write_bytes(pickle.dumps(shifted))
    onnx = path
    if model is not None:  # a run: its served graph, as export makes it
        onnx, _, _ = export_served(model, meta, images, ds.labels, split, path / "served-float.onnx", size)
    out = onnx_outputs(onnx, to_unit_range(np.concatenate([x_val, shifted.views])))
    probs, scores = out["probabilities"], out[DOMAIN_OUTPUT]
    y = np.r_[y_val, shifted.labels].astype(np.int64)
    chosen = choose_thresholds(probs, y, scores)
    n = len(y_val)
    audit_dir = path / "audit-val" if model is not None else work / f"{path.stem}-audit-val"
    audit = run_audit(model_file, data, out=audit_dir, examples=False, part="val")
    return {
        "model": str(path),
        "best_epoch": epoch,
        "epochs_logged": logged,
        "val_accuracy": round(float((probs[:n].argmax(1) == y_val).mean()), 4),
        "thresholds": chosen,
        "served_val_clean": served_summary(probs[:n], y_val, scores[:n], chosen),
        "served_val_shifted": served_summary(probs[n:], shifted.labels, scores[n:], chosen),
        "gradcam_mass_on_cells_over_area_share": audit["cell_attention"]["overall"]["ratio_of_means"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("runs"), help="the shifted views' cache, an .onnx's audit")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = [candidate(run, args.data, args.work) for run in args.runs]
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
