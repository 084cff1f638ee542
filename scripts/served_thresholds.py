"""The shipped model's served thresholds, chosen again through the gate as it is now (issue 18).

The card's thresholds (``uncertain_below``, ``normal_below``, the domain threshold) were chosen at export on the
blocked split's validation part and its 16 shifted versions (:data:`leukostage.training.shifts.VALIDATION_SHIFTS`)
that the gate of that day let through. When the gate changes (a recalibrated validator), the views it lets through
change too; this runs the same choice (:func:`leukostage.training.decision.choose_thresholds`) on the same views
through today's gate and the served int8 file, and prints both, so a reader can see whether the card is still what
its rule would choose. Validation part only: nothing here looks at the test part.

    python scripts/served_thresholds.py [--model src/leukostage/models/lite0.onnx]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from leukostage.domain import DOMAIN_OUTPUT
from leukostage.imaging import load_image, to_unit_range
from leukostage.training.data import default_data_dir, discover, make_split
from leukostage.training.decision import choose_thresholds, served_summary, shifted_views
from leukostage.training.export import onnx_outputs
from leukostage.validate import active_validator_path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "src" / "leukostage" / "models" / "lite0.onnx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(default_data_dir()))
    ap.add_argument("--model", default=str(MODEL))
    args = ap.parse_args()
    card = json.loads(Path(args.model).with_suffix(".card.json").read_text())
    split_name, seed = card["training"]["split"], card["training"]["seed"]
    ds = discover(args.data)
    val_idx = make_split(ds, split_name, seed)["val"]
    val = np.stack([load_image(ds.paths[i]) for i in val_idx])
    y_val = ds.labels[val_idx]
    shifted = shifted_views(val, y_val)
    out = onnx_outputs(args.model, to_unit_range(np.concatenate([val, shifted.views])))
    chosen = choose_thresholds(out["probabilities"], np.r_[y_val, shifted.labels], out[DOMAIN_OUTPUT])
    n = len(val)
    served = served_summary(out["probabilities"][n:], shifted.labels, out[DOMAIN_OUTPUT][n:], chosen)
    validator = Path(active_validator_path()).resolve()
    shown = validator.relative_to(ROOT) if validator.is_relative_to(ROOT) else validator
    print(f"validator {shown}; {split_name} split, seed {seed}, {n} validation fields")
    refused = sum(sum(codes.values()) for codes in shifted.refused.values())
    print(f"shifted views through today's gate: {len(shifted.labels)} (refused {refused})")
    print("refused by the gate:", {k: v for k, v in shifted.refused.items() if v})
    decision = card["decision"]
    print(
        f"card:  uncertain_below {decision['uncertain_below']}, normal_below {decision['normal_below']}, "
        f"domain threshold {card['domain']['threshold']} ({decision['chosen_on']})"
    )
    print(
        f"today: uncertain_below {chosen['uncertain_below']}, normal_below {chosen['normal_below']}, "
        f"domain threshold {round(chosen['domain_threshold'], 4)}"
    )
    print("today's thresholds on the shifted views:", served)


if __name__ == "__main__":
    main()
