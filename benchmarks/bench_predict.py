"""Prediction latency and throughput: ONNX Runtime (the serving path) against torch, measured in the same run.

Per-image latency = decode + preprocess + inference of one 224x224 JPEG at batch 1 (median of repeated runs);
throughput = images per second at batch 32 (inference on preprocessed tensors). Torch uses the same architecture
in eval mode, channels-last (weights do not change the timing); it needs the `train` extra.

    python benchmarks/bench_predict.py [--model src/leukostage/models/robust.onnx] [--repeats 200] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import cv2
import numpy as np

from leukostage.data import default_data_dir
from leukostage.imaging import decode_image, preprocess
from leukostage.predict import Predictor, default_model_path
from timing import median_ms  # benchmarks/timing.py


def sample_jpeg() -> bytes:
    """A real 224x224 Taleqani JPEG when the data is there, else a synthetic one of the same size."""
    folder = default_data_dir() / "taleqani_all" / "original" / "cancerous" / "mid"
    files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if files:
        return files[0].read_bytes()
    rng = np.random.default_rng(0)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (224, 224, 3), dtype=np.uint8))
    return buf.tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--batch-repeats", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    data = sample_jpeg()
    predictor = Predictor.load(args.model)
    batch32 = np.repeat(preprocess(decode_image(data))[None], 32, axis=0)
    results: dict[str, dict] = {}

    def ort_one() -> None:
        predictor.predict_proba(preprocess(decode_image(data))[None])

    results["onnxruntime"] = {
        "latency_ms_batch1": median_ms(ort_one, args.repeats),
        "throughput_img_s_batch32": 32_000 / median_ms(lambda: predictor.predict_proba(batch32), args.batch_repeats, 2),
    }
    try:
        import torch

        from leukostage.model import build_model

        model = build_model().eval().to(memory_format=torch.channels_last)

        def torch_run(x: np.ndarray) -> None:
            with torch.inference_mode():
                torch.softmax(model(torch.from_numpy(x).permute(0, 3, 1, 2)), 1)

        results["torch"] = {
            "latency_ms_batch1": median_ms(lambda: torch_run(preprocess(decode_image(data))[None]), args.repeats),
            "throughput_img_s_batch32": 32_000 / median_ms(lambda: torch_run(batch32), args.batch_repeats, 2),
        }
        results["ratio_torch_over_onnxruntime_latency"] = (
            results["torch"]["latency_ms_batch1"] / results["onnxruntime"]["latency_ms_batch1"]
        )
    except ImportError:
        results["torch"] = {"skipped": "torch not installed (train extra)"}
    results["setup"] = {"model": args.model, "repeats": args.repeats, "cores": os.cpu_count(),
                        "input": "224x224 JPEG, decode + preprocess + inference"}
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
