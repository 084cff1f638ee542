"""The served pipeline on validation fields under a lamp brighter than the model trained on (issue 18).

Each field of the blocked split's validation part (every ``--every``-th) is brightened by each gain (a uniform gain,
clipped at white, as ``shift_check.py`` makes exposure) and read as an upload: gate, capture layer, model. Prints,
per gain, how many fields were answered right, answered wrong, left uncertain (by reason) and refused (by code).
``--without-red-cell-rule`` serves a copy of the active validator without ``max_clipped_without_red_cells``, to
show what the washed-out red-cell rule changes.

    python scripts/brighter_lamp.py [--every 2] [--gains 1.2 1.35 1.5 1.75 2 3] [--without-red-cell-rule]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from leukostage.classes import CLASS_KEYS, NORMAL_KEY
from leukostage.imaging import load_image
from leukostage.predict import Predictor, analyse_bytes
from leukostage.training.data import default_data_dir, discover, make_split
from leukostage.validate import active_validator_path

SPLIT, SEED = "blocked", 42  # the shipped model's split (its card)


def outcome(result: dict, label: int) -> str:
    if not result["valid"]:
        return f"refused: {result['code']}"
    if result.get("uncertain_reason"):
        return f"uncertain: {result['uncertain_reason']}"
    if result["label"] == CLASS_KEYS[label]:
        return "right"
    return "wrong: leukaemia called normal" if result["label"] == NORMAL_KEY else "wrong"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(default_data_dir()))
    ap.add_argument("--every", type=int, default=2, help="every N-th validation field (1: all 390)")
    ap.add_argument("--gains", type=float, nargs="+", default=[1.2, 1.35, 1.5, 1.75, 2.0, 3.0])
    ap.add_argument("--without-red-cell-rule", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.without_red_cell_rule:
            doc = json.loads(active_validator_path().read_text())
            doc["capture"].pop("max_clipped_without_red_cells", None)
            path = Path(folder) / "validator.json"
            path.write_text(json.dumps(doc))
            os.environ["LEUKOSTAGE_VALIDATOR"] = str(path)
        ds = discover(args.data)
        fields = make_split(ds, SPLIT, SEED)["val"][:: args.every]
        predictor = Predictor.load()
        print(
            f"{len(fields)} validation fields ({SPLIT} split, seed {SEED}, every {args.every}); "
            f"validator {'without' if args.without_red_cell_rule else 'with'} the red-cell rule"
        )
        for gain in args.gains:
            counts: Counter = Counter()
            for i in fields:
                rgb = (load_image(ds.paths[i]).astype(np.float32) * gain).clip(0, 255).astype(np.uint8)
                png = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes()
                counts[outcome(analyse_bytes(png, "field.png", predictor).result, int(ds.labels[i]))] += 1
            wrong = sum(n for key, n in counts.items() if key.startswith("wrong"))
            answered = counts["right"] + wrong
            print(f"x{gain:<5g} answered {answered:3d} (wrong {wrong:2d}) {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
