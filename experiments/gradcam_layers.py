"""Grad-CAM mass on cells at several layers of a shipped lite0 model, on the validation part of its own split.

Asked before retraining (issue 9): would a finer Grad-CAM layer put the evidence on the cells without changing the
model? For the first lite0 model it gave 0.95-1.14x the cells' area share at every layer tried (README, "What the
model looks at"), so the model was retrained instead. Needs torch (the train extra); the masks and the measure are
the audit's (segmented twins, ratio of means).

    python experiments/gradcam_layers.py [--model src/leukostage/models/lite0-float.onnx] [--part val]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from leukostage.explain import upsample
from leukostage.imaging import load_image
from leukostage.predict import MODELS_DIR, card_path_for, preprocess
from leukostage.training.audit import heat_mass_share, load_mask
from leukostage.training.data import default_data_dir, discover, make_split
from leukostage.training.model import build_model, config_from_dict, gradcam_maps

LAYERS = {
    "block 7 (14x14)": "blocks.7",
    "block 10 (14x14)": "blocks.10",
    "block 13 (7x7)": "blocks.13",
    "block 14 (7x7)": "blocks.14",
    "block 15 (7x7)": "blocks.15",
    "conv head (7x7, served)": "conv_head",
}
FLOAT_MODEL = MODELS_DIR / "lite0-float.onnx"  # the served lite0.onnx is its int8 version: no torch weights in it


def torch_model(path):
    """An exported float model as a torch module, rebuilt from its ONNX initializers and card (as the tests do)."""
    card = json.loads(card_path_for(path).read_text())
    model = build_model(config_from_dict(card["architecture"]))
    weights = {i.name.removeprefix("model."): numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    model.load_state_dict(
        {k: torch.from_numpy(weights[k].copy()) for k in model.state_dict() if not k.endswith("num_batches_tracked")},
        strict=False,
    )
    return model.eval(), card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(FLOAT_MODEL), help="a float graph (torch is rebuilt from its weights)")
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--part", default="val", choices=("val", "test"))
    args = parser.parse_args()
    model, card = torch_model(args.model)
    ds = discover(args.data)
    idx = make_split(ds, card["training"]["split"], card["training"]["seed"])[args.part]
    modules = dict(model.named_modules())
    acts: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, inputs, output) -> None:  # returning None keeps the output as it is
            acts[name] = output

        return hook

    for name, key in LAYERS.items():
        modules[key].register_forward_hook(keep(name))
    shares = {name: [] for name in LAYERS}
    areas = []
    for i in idx:
        rgb = load_image(ds.paths[i])
        mask = load_mask(ds.paths[i], rgb.shape[:2])
        logits = model(torch.from_numpy(preprocess(rgb, model.cfg.image_size)[None]).permute(0, 3, 1, 2).float())
        for name in LAYERS:
            cam = gradcam_maps(acts[name], logits[0, int(logits.argmax())])[0].detach().numpy()
            cam = cam / cam.max() if cam.max() > 0 else cam
            shares[name].append(heat_mass_share(upsample(cam, *rgb.shape[:2]), mask))
        areas.append(mask.mean())
    areas = np.array(areas)
    result = {}
    for name, values in shares.items():
        m = np.array(values)
        ok = ~np.isnan(m)
        result[name] = round(float(m[ok].mean() / areas[ok].mean()), 3)
    print(
        json.dumps(
            {
                "model": args.model,
                "split": card["training"]["split"],
                "part": args.part,
                "n": len(idx),
                "gradcam_mass_on_cells_over_area_share": result,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
