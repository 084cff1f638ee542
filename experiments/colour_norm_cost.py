"""What the in-graph colour normalisation costs, and what a cheaper percentile would change (issue 9's speed).

1. ONNX Runtime's own profile of the served model at batch 32: the share of kernel time per operator type.
2. The same weights exported twice without the domain output: the 90th percentile over every pixel (as shipped)
   and over a stride-2 subsample; batch-32 throughput, one-thread batch-1 latency, and how far the probabilities and
   labels move on the validation part of the model's split. A throw-away comparison: nothing here is shipped.
Needs torch (the train extra).

    python experiments/colour_norm_cost.py [--model src/leukostage/models/lite0-float.onnx] [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from gradcam_layers import FLOAT_MODEL, torch_model  # experiments/gradcam_layers.py

from leukostage.imaging import load_image
from leukostage.predict import preprocess
from leukostage.training.data import default_data_dir, discover, make_split
from leukostage.training.export import export_onnx
from leukostage.training.model import MIN_BACKGROUND_LEVEL, ColourNormalise


def session(path, threads: int, profile_prefix: str | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if profile_prefix:
        opts.enable_profiling, opts.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def op_shares(path, batch: np.ndarray, threads: int, tmp: Path) -> dict[str, float]:
    s = session(path, threads, str(tmp / "profile"))
    for _ in range(5):
        s.run(None, {"image": batch})
    events = json.loads(Path(s.end_profiling()).read_text())
    times = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[e["args"]["op_name"]] += e["dur"]
    total = sum(times.values())
    return {op: round(100 * t / total, 1) for op, t in times.most_common(6)}


def stride2(self, x: torch.Tensor) -> torch.Tensor:
    """ColourNormalise.forward with the percentile taken on every second pixel of every second row."""
    background = x[:, :, ::2, ::2].flatten(2).topk(max(1, self.k // 4), dim=-1).values[..., -1:]
    return x * (self.level / background.clamp_min(MIN_BACKGROUND_LEVEL)).unsqueeze(-1)


def timings(path, x: np.ndarray, threads: int) -> dict[str, float]:
    many, one = session(path, threads), session(path, 1)
    probs = np.concatenate([many.run(["probabilities"], {"image": x[i : i + 32]})[0] for i in range(0, len(x), 32)])
    batch = []
    for _ in range(5):
        t = time.perf_counter()
        many.run(["probabilities"], {"image": x[:32]})
        batch.append(time.perf_counter() - t)
    single = []
    for _ in range(30):
        t = time.perf_counter()
        one.run(["probabilities"], {"image": x[:1]})
        single.append(time.perf_counter() - t)
    return {
        "probs": probs,
        "batch32_img_s": round(32 / float(np.median(batch)), 1),
        "batch1_1thread_ms": round(1000 * float(np.median(single)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(FLOAT_MODEL), help="a float graph (torch is rebuilt from its weights)")
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model, card = torch_model(args.model)
    ds = discover(args.data)
    idx = make_split(ds, card["training"]["split"], card["training"]["seed"])["val"]
    size = model.cfg.image_size
    x = np.stack([preprocess(load_image(ds.paths[i]), size) for i in idx]).astype(np.float32)
    temperature = card["calibration"]["temperature"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shares = op_shares(args.model, x[:32], args.threads, tmp)
        exact = timings(export_onnx(model, tmp / "exact.onnx", size, temperature), x, args.threads)
        shipped_forward = ColourNormalise.forward
        ColourNormalise.forward = stride2
        try:
            fast = timings(export_onnx(model, tmp / "stride2.onnx", size, temperature), x, args.threads)
        finally:
            ColourNormalise.forward = shipped_forward
    p, q = exact.pop("probs"), fast.pop("probs")
    print(
        json.dumps(
            {
                "model": args.model,
                "threads": args.threads,
                "kernel_time_share_percent": shares,
                "percentile_every_pixel": exact,
                "percentile_stride_2": fast,
                "val_images": len(idx),
                "max_abs_probability_change": round(float(np.abs(p - q).max()), 5),
                "val_label_changes": int((p.argmax(1) != q.argmax(1)).sum()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
