"""How the shipped int8 setting compares with the others tried, and what the exact int8 kernels cost (issue 9's
speed). Everything on the validation part of the float model's own split; nothing here is shipped.

1. Quantisation settings, each calibrated on the whole training part like the shipped one: the backbone's
   convolutions, clips and adds (shipped); the convolutions alone; 7-bit weights (``reduce_range``); uint8 weights.
   Per setting: how far it moved from the float graph (largest probability change, top classes changed, median
   domain-score change, correlation of Grad-CAM's layer), batch-32 throughput and one-thread batch-1 latency.
2. The shipped setting with ONNX Runtime's exact uint8 x uint8 kernels forced on (what leukostage asks for on CPUs
   without VNNI): largest probability change against the fast path, and the same timings.

    python experiments/quantization_variants.py [--model src/leukostage/models/lite0-float.onnx] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from gradcam_layers import FLOAT_MODEL  # experiments/gradcam_layers.py
from onnxruntime.quantization import QuantType

from leukostage.domain import DOMAIN_OUTPUT
from leukostage.imaging import to_unit_range
from leukostage.predict import card_path_for, session_options
from leukostage.training.data import default_data_dir, reproduce_split
from leukostage.training.quantize import quantize_onnx

VARIANTS = {
    "backbone convolutions, clips and adds (shipped)": {},
    "convolutions alone": {"ops": ("Conv",)},
    "7-bit weights (reduce_range)": {"reduce_range": True},
    "uint8 weights": {"weight_type": QuantType.QUInt8},
}


def outputs_and_timings(path, x: np.ndarray, threads: int, exact_int8: bool | None = None) -> tuple[dict, dict]:
    many = ort.InferenceSession(str(path), session_options(threads, exact_int8), providers=["CPUExecutionProvider"])
    one = ort.InferenceSession(str(path), session_options(1, exact_int8), providers=["CPUExecutionProvider"])
    names = ["probabilities", "features", DOMAIN_OUTPUT]
    parts = [many.run(names, {"image": x[i : i + 32]}) for i in range(0, len(x), 32)]
    outputs = {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(names)}
    batch, single = [], []
    for _ in range(5):
        t = time.perf_counter()
        many.run(["probabilities"], {"image": x[:32]})
        batch.append(time.perf_counter() - t)
    for i in range(30):
        t = time.perf_counter()
        one.run(["probabilities"], {"image": x[i : i + 1]})
        single.append(time.perf_counter() - t)
    return outputs, {
        "batch32_img_s": round(32 / float(np.median(batch)), 1),
        "batch1_1thread_ms": round(1000 * float(np.median(single)), 2),
    }


def moved(ref: dict, got: dict) -> dict:
    p, q = ref["probabilities"], got["probabilities"]
    return {
        "max_abs_probability_change": round(float(np.abs(p - q).max()), 4),
        "top_class_changes": int((p.argmax(1) != q.argmax(1)).sum()),
        "median_domain_score_change": round(
            float(np.median(np.abs(got[DOMAIN_OUTPUT] - ref[DOMAIN_OUTPUT]) / ref[DOMAIN_OUTPUT])), 4
        ),
        "gradcam_layer_correlation": round(
            float(np.corrcoef(ref["features"].ravel(), got["features"].ravel())[0, 1]), 4
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(FLOAT_MODEL), help="an exported float lite0 graph (its card beside it)")
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    card = json.loads(card_path_for(args.model).read_text())
    training = card["training"]
    _, split, images = reproduce_split(
        args.data, training["data_fingerprint"], training["split"], training["seed"], card["architecture"]["image_size"]
    )
    x = to_unit_range(images[split["val"]])
    ref, ref_timing = outputs_and_timings(args.model, x, args.threads)
    report = {"model": args.model, "threads": args.threads, "val_images": len(x), "float": ref_timing, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in VARIANTS.items():
            path = Path(tmp) / "variant.onnx"
            try:
                quantize_onnx(args.model, path, images[split["train"]], **options)
                got, timing = outputs_and_timings(path, x, args.threads)
            except Exception as exc:  # noqa: BLE001 - a setting the quantiser or ONNX Runtime refuses is a result too
                report["variants"][name] = {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                continue
            report["variants"][name] = {**moved(ref, got), **timing}
            if not options:  # the shipped setting: also with the exact kernels forced on
                exact, exact_timing = outputs_and_timings(path, x, args.threads, exact_int8=True)
                report["shipped_with_exact_int8_kernels"] = {
                    "max_abs_probability_change_from_fast_path": float(
                        np.abs(exact["probabilities"] - got["probabilities"]).max()
                    ),
                    **exact_timing,
                }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
