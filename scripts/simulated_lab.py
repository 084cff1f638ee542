"""A simulated laboratory, before and after `leukostage adapt` (issue 19's report; needs the train extra).

The shipped model's own test part (unseen patients of the training hospital; its split rebuilt from the card) is
re-made by one of `training.shifts.LABORATORIES` (a stain, a microscope and a camera, every nuisance at once) and
split by patient run (runs of consecutive file numbers, as `adapt` splits) into the fields the laboratory gives to
`adapt` (about 45 %, ~175) and its test part (the rest, never seen by `adapt`). Then, on the laboratory's test part:
the shipped model, the adapted model; and, for forgetting, the adapted model on the same patients' fields as the
training hospital took them and on other laboratories' normal blood (PBC, BCCD).

    python scripts/simulated_lab.py lab-a --out reports/adapt/lab-a [--epochs 3] [--data ../shared/data]

Writes OUT/report.json and OUT/report.md (the command, the split, the numbers); the laboratory's images and the
adapted model go to a temporary folder unless --keep DIR.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from leukostage.classes import CLASS_KEYS
from leukostage.predict import Predictor, default_model_path
from leukostage.training.adapt import RUN_LENGTH, discover_laboratory, lab_views, served
from leukostage.training.data import default_data_dir, file_number, reproduce_split
from leukostage.training.evaluate import score_external
from leukostage.training.quantize import sha256
from leukostage.training.shifts import LABORATORIES, write_laboratory

GIVEN_SHARE = 0.45  # of each class's patient runs, given to adapt; the rest is the laboratory's test part


def split_runs(paths: list[Path], labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(given to adapt, laboratory test) indices: per class, whole runs of consecutive file numbers on one side."""
    rng = np.random.default_rng(seed)
    given = []
    for c in range(len(CLASS_KEYS)):
        idx = np.flatnonzero(labels == c)
        runs: dict[int, list[int]] = {}
        for i in idx:
            runs.setdefault(file_number(paths[i]) // RUN_LENGTH, []).append(int(i))
        keys = sorted(runs)
        order = rng.permutation(len(keys))
        n = max(1, round(GIVEN_SHARE * len(keys)))
        for j in order[:n]:
            given += runs[keys[j]]
    given_idx = np.asarray(sorted(given), np.int64)
    return given_idx, np.setdiff1d(np.arange(len(labels)), given_idx)


def laboratory_views(folder: Path, model: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """The gate's views of a Table 2 folder (what ``model`` reads, through the validator it is served with), their
    classes, and how many were refused."""
    lab = discover_laboratory(folder)
    read = lab_views(lab, validator=Predictor.load(model).validator_path)
    return read.views, np.asarray(lab.labels)[read.kept], len(read.refused)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("lab", choices=sorted(LABORATORIES))
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default=None, help="keep the laboratory's images and the adapted model here")
    a = parser.parse_args()
    data, out = Path(a.data), Path(a.out)
    base = default_model_path()
    card = Predictor.load(base).card
    training = card["training"]
    ds, split, images = reproduce_split(data, training["data_fingerprint"], training["split"], training["seed"], 224)
    test = split["test"]
    paths = [Path(ds.paths[i]) for i in test]
    labels = ds.labels[test]
    given, lab_test = split_runs(paths, labels, a.seed)
    shift = LABORATORIES[a.lab]
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix=f"leukostage-{a.lab}-"))
    fields = list(zip(map(str, paths), labels.tolist()))
    write_laboratory([fields[i] for i in given], shift, work / "given", seed=a.seed)
    write_laboratory([fields[i] for i in lab_test], shift, work / "test", seed=a.seed + 10_000)
    adapted = work / f"{a.lab}.onnx"
    command = [sys.executable, "-m", "leukostage.cli", "adapt", "--data", str(work / "given"), "--out", str(adapted)]
    command += ["--epochs", str(a.epochs), "--seed", str(a.seed), "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - t0

    views = {name: laboratory_views(work / "test", path) for name, path in (("base", base), ("adapted", adapted))}
    clean = images[test[lab_test]]
    others = [data / "pbc_sample", data / "bccd_smears"]
    report = {
        "command": " ".join(shlex.quote(s) for s in sys.argv),
        "adapt_command": " ".join(shlex.quote(s) for s in command[2:]),
        "laboratory": {"name": a.lab, "shift": {k: v for k, v in asdict(shift).items() if v not in (None, 0, 0.0)}},
        "base": {"file": base.name, "sha256": sha256(base)},
        "split": {
            "source": f"{training['split']} split (seed {training['seed']}, fingerprint {training['data_fingerprint']})"
            ", test part",
            "rule": f"runs of {RUN_LENGTH} consecutive file numbers per class; {GIVEN_SHARE:.0%} of the runs given to "
            f"adapt, seed {a.seed}",
            "given_to_adapt": int(len(given)),
            "laboratory_test": int(len(lab_test)),
        },
        "adapt_seconds": round(seconds, 1),
        "adapted_gate": Predictor.load(adapted).card.get("gate"),
        "laboratory_test": {
            name: of_all(served(path, *views[name][:2]), len(lab_test), views[name][2])
            for name, path in (("base", base), ("adapted", adapted))
        },
        "training_hospital_same_patients_clean": {
            "base": served(base, clean, labels[lab_test]),
            "adapted": served(adapted, clean, labels[lab_test]),
        },
        "other_laboratories_adapted": {
            name: {"n": t["n"], "leukaemia": t["leukaemia_labelled"]}
            for name, t in score_external(adapted, others, out / "external").items()
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def of_all(summary: dict, fields: int, refused: int) -> dict:
    """``summary`` (of the fields the gate let through) with the fields it refused and ``answered_of_all``: answered
    among all the laboratory's test fields, a refused field counted as not answered (as ``shift_check.py`` counts,
    and the issue's target)."""
    answered = round(summary["decided"] / fields, 4) if fields else None
    return {**summary, "refused_by_gate": refused, "answered_of_all": answered}


def markdown(r: dict) -> str:
    def row(name: str, m: dict) -> str:
        u = m["uncertain"]
        return (
            f"| {name} | {m['n']} | {m.get('answered_of_all', m['coverage']):.3f} | {m['coverage']:.3f} | "
            f"{m['selective_accuracy'] or 0:.4f} | "
            f"{m['leukaemia_called_normal']} | {u['low_confidence']} / {u['outside_training_domain']} |"
        )

    lt, th = r["laboratory_test"], r["training_hospital_same_patients_clean"]
    lines = [
        f"# Simulated laboratory {r['laboratory']['name']}: before and after `adapt`",
        "",
        f"Command: `{r['command']}` (adapt: `{r['adapt_command']}`, {r['adapt_seconds']} s).",
        f"Laboratory: `{json.dumps(r['laboratory']['shift'])}`. Split: {r['split']['source']}; {r['split']['rule']}: "
        f"{r['split']['given_to_adapt']} fields given to adapt, {r['split']['laboratory_test']} in its test part "
        f"(refused by the gate: {lt['base']['refused_by_gate']} as the shipped model is served, "
        f"{lt['adapted']['refused_by_gate']} as the adapted one is"
        + (f", with its laboratory validator {r['adapted_gate']['validator']}" if r.get("adapted_gate") else "")
        + ").",
        "",
        "| model, images | n (through the gate) | answered, of all fields | answered, of those through the gate | "
        "accuracy among answered | leukaemia called Normal | uncertain: low confidence / outside the training domain |",
        "|---|---|---|---|---|---|---|",
        row("shipped, laboratory test", lt["base"]),
        row("adapted, laboratory test", lt["adapted"]),
        row("shipped, same patients as the training hospital took them", th["base"]),
        row("adapted, same patients as the training hospital took them", th["adapted"]),
        "",
        "Other laboratories' normal blood labelled a leukaemia by the adapted model: "
        + ", ".join(f"{k} {v['leukaemia']}/{v['n']}" for k, v in r["other_laboratories_adapted"].items())
        + ".",
        "",
        "Decision support for research use, not a diagnosis.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
