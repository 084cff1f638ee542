"""Wall time of the robustness mix: 1,000 requests from 16 concurrent clients against `leukostage serve` (gunicorn,
2 workers), the mix of tests/test_web_robustness.py (valid smears, non-smears, garbage, oversize bodies, truncated
JPEGs, shuffled), next to a baseline in the same run: the same number of valid smears alone.

The test asserts what must hold (no 5xx, no drops, bounded memory); the time lives here, as the median of repeats
and as a ratio to the baseline (which cancels most of the machine's other load). The test used to require < 50 s.

    python benchmarks/bench_http_mixed.py [--requests 1000] [--clients 16] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from leukostage.predict import default_model_path
from leukostage.training.data import default_data_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http import start_server, stop_server  # noqa: E402
from timing import report  # noqa: E402

LIMIT = 2 * 2**20  # the per-file limit the test also sets, so oversize bodies stay cheap on loopback
FORMER_BUDGET_S = 50.0  # what test_web_robustness asserted before issue 12


def post(port: int, data: bytes) -> int:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(
            "POST", "/predict", body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def inputs(port: int, data_dir: Path) -> dict[str, bytes]:
    """The mix's request bodies; the valid one is the first candidate smear (224 x 224) the server accepts."""
    candidates = sorted((data_dir / "bccd_smears").glob("*.jpg"))[:3]
    candidates += sorted((data_dir / "pbc_sample").glob("*/*.jpg"))[:3]
    for path in candidates:
        rgb = cv2.resize(cv2.imread(str(path)), (224, 224), interpolation=cv2.INTER_AREA)
        smear = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        if post(port, smear) == 200:
            break
    else:
        raise SystemExit(f"the server rejects every candidate smear under {data_dir}")
    rng = np.random.default_rng(0)
    return {
        "valid": smear,
        "non_smear": cv2.imencode(".png", np.full((224, 224, 3), 255, np.uint8))[1].tobytes(),
        "garbage": rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes(),
        "oversize": b"\xff\xd8\xff" + rng.integers(0, 256, LIMIT + 500_000, dtype=np.uint8).tobytes(),
        "truncated": smear[: len(smear) // 2],
    }


def run(port: int, bodies: list[bytes], clients: int) -> tuple[float, int]:
    """Wall seconds for all bodies from ``clients`` threads, and how many answers were 5xx or failed."""

    def one(data: bytes) -> bool:
        try:
            return post(port, data) >= 500
        except OSError:
            return True

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        bad = sum(pool.map(one, bodies))
    return time.perf_counter() - t0, bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    os.environ["LEUKOSTAGE_MAX_FILE_BYTES"] = str(LIMIT)  # read by the workers
    proc, port = start_server(args.model, workers=2)
    try:
        kinds_bodies = inputs(port, Path(args.data))
        kinds = [k for k in kinds_bodies for _ in range(args.requests // len(kinds_bodies))]
        random.Random(0).shuffle(kinds)
        mixed = [kinds_bodies[k] for k in kinds]
        valid = [kinds_bodies["valid"]] * len(mixed)
        run(port, valid[:50], args.clients)  # warm-up
        walls: dict[str, list[float]] = {"mixed": [], "valid_only": []}
        failures = 0
        for _ in range(args.repeats):  # interleaved, so slow phases of the machine hit both alike
            for name, bodies in (("valid_only", valid), ("mixed", mixed)):
                wall, bad = run(port, bodies, args.clients)
                walls[name].append(wall)
                failures += bad
    finally:
        stop_server(proc)
    med = {k: statistics.median(v) for k, v in walls.items()}
    result = {
        "requests": len(mixed),
        "clients": args.clients,
        "repeats": args.repeats,
        "workers": 2,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "median_wall_s": {k: round(v, 2) for k, v in med.items()},
        "median_requests_per_s": {k: round(len(mixed) / v, 1) for k, v in med.items()},
        "mixed_over_valid_only": round(med["mixed"] / med["valid_only"], 3),
        "former_test_budget_s": FORMER_BUDGET_S,
        "mixed_within_former_budget": med["mixed"] < FORMER_BUDGET_S,
        "5xx_or_failed": failures,
    }
    report(result, args.json)


if __name__ == "__main__":
    main()
