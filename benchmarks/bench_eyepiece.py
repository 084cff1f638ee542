"""A phone photo through the eyepiece: the gate's cost, with the disc flattened exactly and from a sample of pixels.

25 real Taleqani fields side by side (a stretch of slide) are magnified into a disc of --disc pixels (a 12-megapixel
phone's eyepiece disc is ~2900 px), with a lens fall-off and a black surround, and saved as a JPEG. Times (median of
--repeats runs, milliseconds):

- ``eyepiece_field``: the flattening alone, exact (every pixel) and sampled (what the gate does above
  ``capture.LARGE_DISC``), and their ratio;
- ``validate_bytes``: the whole gate on the JPEG, both ways, with its verdict. The content layer refuses this mosaic
  (``not_blood_smear``: at its 128-px copy the cells of 25 fields are specks); the gate still reads its ruler.

The exact way is the baseline, measured in the same run. No assertion: timings depend on the machine and its load.

    python benchmarks/bench_eyepiece.py [--disc 2900] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np
from timing import median_ms, report  # benchmarks/timing.py

from leukostage import capture
from leukostage.imaging import load_image
from leukostage.training.augment import eyepiece_photo
from leukostage.training.data import default_data_dir
from leukostage.validate import validate_bytes

FOLDER = "taleqani_all/original/cancerous/mid"
FIELD_PX = 224


def slide(folder: Path, n: int = 5) -> np.ndarray:
    """n x n real fields of one class folder side by side: a stretch of slide larger than any one field."""
    files = sorted(folder.glob("*.jpg"))[: n * n]
    fields = [cv2.resize(load_image(p), (FIELD_PX, FIELD_PX), interpolation=cv2.INTER_AREA) for p in files]
    return np.vstack([np.hstack(fields[row * n : (row + 1) * n]) for row in range(n)])


def phone_photo(rgb: np.ndarray, disc: int) -> np.ndarray:
    """``rgb`` magnified into a round field of ``disc`` pixels, dimmed towards its rim, on black (no blur, no JPEG)."""
    side = round(disc / 0.94)
    return eyepiece_photo(rgb, side / max(rgb.shape[:2]), radius=0.47, fall_off=0.3, blur=0.0, quality=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disc", type=int, default=2900, help="the eyepiece disc's diameter in pixels")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    photo = phone_photo(slide(default_data_dir() / FOLDER), args.disc)
    jpeg = cv2.imencode(".jpg", photo[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    circle = capture.find_eyepiece_field(photo)
    assert circle is not None, "the benchmark photo should be found as an eyepiece photo"
    sampled_limit = capture.LARGE_DISC
    verdicts = {}
    ms: dict[str, float] = {}
    for name, limit in (("exact", 10**9), ("sampled", sampled_limit)):
        capture.LARGE_DISC = limit
        ms[f"eyepiece_field {name}"] = median_ms(lambda: capture.eyepiece_field(photo, circle), args.repeats, 1)
        ms[f"validate_bytes {name}"] = median_ms(lambda: validate_bytes(jpeg), args.repeats, 1)
        verdict = validate_bytes(jpeg)[1]
        verdicts[name] = {"valid": verdict.valid, "code": verdict.code, "capture": verdict.capture}
    capture.LARGE_DISC = sampled_limit
    report(
        {
            "photo": f"{photo.shape[1]}x{photo.shape[0]} JPEG, disc {args.disc} px (25 fields of {FOLDER})",
            "repeats": args.repeats,
            "large_disc": sampled_limit,
            "median_ms": {k: round(v, 1) for k, v in ms.items()},
            "verdicts": verdicts,
            "sampled_over_exact": {
                part: round(ms[f"{part} sampled"] / ms[f"{part} exact"], 3)
                for part in ("eyepiece_field", "validate_bytes")
            },
            "machine": {"cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        },
        args.json,
    )


if __name__ == "__main__":
    main()
