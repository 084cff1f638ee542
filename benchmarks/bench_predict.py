"""Prediction latency and throughput of one or more ONNX models (e.g. the old and the new default), in one run.

Per model: batch-1 latency of decode + preprocess + inference of one 224x224 JPEG with one ONNX Runtime thread (what a
serving worker gets when there is one worker per core), the same with all cores, and images per second at batch 32
(inference on preprocessed tensors, all cores); plus the model file's size. Medians of repeated runs; the models
are measured in alternating rounds so that other load on the machine hits them alike, and the report gives each
model's ratio to the first (the baseline). With the `train` extra, torch's latency for the same architecture is
given too.

    python benchmarks/bench_predict.py [--models OLD.onnx NEW.onnx] [--repeats 100] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import cv2
import numpy as np
from timing import median_ms, report  # benchmarks/timing.py

from leukostage.imaging import decode_image, preprocess
from leukostage.predict import Predictor, default_model_path
from leukostage.training.data import default_data_dir

TARGET_BATCH32_IMG_S = 200.0
TARGET_MODEL_MB = 25.0


def sample_jpeg() -> bytes:
    """A real 224x224 Taleqani JPEG when the data is there, else a synthetic one of the same size."""
    folder = default_data_dir() / "taleqani_all" / "original" / "cancerous" / "mid"
    files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if files:
        return files[0].read_bytes()
    rng = np.random.default_rng(0)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (224, 224, 3), dtype=np.uint8))
    return buf.tobytes()


def measure(path: str, data: bytes, repeats: int, batch_repeats: int) -> dict:
    one_thread, all_threads = Predictor.load(path, threads=1), Predictor.load(path)
    size = one_thread.image_size
    batch32 = np.repeat(preprocess(decode_image(data), size)[None], 32, axis=0)
    return {
        "latency_ms_batch1_1thread": median_ms(
            lambda: one_thread.run_decision(preprocess(decode_image(data), size)[None]), repeats
        ),
        "latency_ms_batch1_all_threads": median_ms(
            lambda: all_threads.run_decision(preprocess(decode_image(data), size)[None]), repeats
        ),
        "throughput_img_s_batch32": 32_000 / median_ms(lambda: all_threads.run_decision(batch32), batch_repeats, 2),
    }


def torch_latency(path: str, data: bytes, repeats: int) -> float | None:
    """The same architecture in torch (eval, channels-last; weights do not change the timing), or None."""
    try:
        import torch

        from leukostage.training.model import build_model, config_from_dict
    except ImportError:
        return None
    card = Predictor.load(path).card
    model = build_model(config_from_dict(card["architecture"])).eval().to(memory_format=torch.channels_last)
    x = preprocess(decode_image(data), int(card["input"]["shape"][1]))[None]

    def run() -> None:
        with torch.inference_mode():
            torch.softmax(model(torch.from_numpy(x).permute(0, 3, 1, 2)), 1)

    return median_ms(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=[str(default_model_path())],
        help="ONNX models; the first is the baseline the others are compared with",
    )
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--batch-repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; each number is their median")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    data = sample_jpeg()
    rounds: dict[str, list[dict]] = {m: [] for m in args.models}
    for _ in range(args.rounds):
        for m in args.models:
            rounds[m].append(measure(m, data, args.repeats, args.batch_repeats))
    results: dict[str, dict] = {}
    for m, runs in rounds.items():
        results[m] = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
        results[m]["model_mb"] = round(Path(m).stat().st_size / 1e6, 2)
        t = torch_latency(m, data, max(10, args.repeats // 4))
        results[m]["torch_latency_ms_batch1"] = None if t is None else round(t, 2)
        results[m]["targets_met"] = {
            "batch32_img_s": results[m]["throughput_img_s_batch32"] >= TARGET_BATCH32_IMG_S,
            "model_mb": results[m]["model_mb"] <= TARGET_MODEL_MB,
        }
    base = results[args.models[0]]
    for m in args.models[1:]:
        results[m]["ratio_to_baseline"] = {k: round(results[m][k] / base[k], 3) for k in rounds[m][0]}
    results["setup"] = {
        "baseline": args.models[0],
        "repeats": args.repeats,
        "rounds": args.rounds,
        "cores": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "input": "one 224x224 Taleqani JPEG: decode + preprocess (to each model's input side) + "
        "inference (probabilities and, where the model has one, the domain score)",
    }
    report(results, args.json)


if __name__ == "__main__":
    main()
