"""Time to build a case's reports: the PDF (with and without Grad-CAM overlays), the FHIR bundle and the CSV, for a
case of N real fields (default 80: 8 clients x 10 fields, the issue's load), median of repeated runs.

The PDF without overlays is the baseline in the same run: the ratio says what the heat maps of the top fields cost
(each is one more model pass). Needs the real data (``$LEUKOSTAGE_DATA``, default ../shared/data).

    python benchmarks/bench_reports.py [--fields 80] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json

from timing import median_ms  # benchmarks/timing.py

from leukostage.cases.rule import summarise
from leukostage.explain import explain_image, overlay, png_bytes
from leukostage.imaging import decode_image
from leukostage.predict import Predictor, analyse_bytes
from leukostage.reports.csv import case_csv
from leukostage.reports.fhir import case_bundle
from leukostage.reports.pdf import case_pdf
from leukostage.training.data import default_data_dir


def make_case(predictor: Predictor, n: int) -> tuple[dict, dict[str, bytes]]:
    """A case dict (CASE_SCHEMA.md) over the first ``n`` Mid Stage images, with the model's real results."""
    folder = default_data_dir() / "taleqani_all" / "original" / "cancerous" / "mid"
    paths = sorted(folder.glob("*.jpg"))[:n]
    if len(paths) < n:
        raise SystemExit(f"need {n} images in {folder}; found {len(paths)} (set LEUKOSTAGE_DATA)")
    store, images = {}, []
    for i, path in enumerate(paths):
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        store[sha] = data
        images.append(
            {
                "image_id": i + 1,
                "sha256": sha,
                "filename": path.name,
                "uploaded_at": "2026-11-26T10:00:00Z",
                "uploaded_by": "tech",
                "width": 224,
                "height": 224,
                "result": analyse_bytes(data, path.name, predictor).result,
                "override": None,
            }
        )
    case = {
        "id": 1,
        "accession": "BENCH-1",
        "patient_ref": "Patient/bench",
        "note": None,
        "status": "signed_off",
        "created_at": "2026-11-26T10:00:00Z",
        "created_by": "tech",
        "updated_at": "2026-11-26T11:00:00Z",
        "model": predictor.info,
        "images": images,
        "summary": summarise([i["result"] for i in images]),
        "review": {"final_call": "mid", "comment": "", "reviewer": "rev", "signed_off_at": "2026-11-26T11:00:00Z"},
        "amendments": [],
    }
    return case, store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    predictor = Predictor.load()
    case, store = make_case(predictor, args.fields)

    def gradcam(data: bytes) -> bytes:
        rgb = decode_image(data)
        return png_bytes(overlay(rgb, explain_image(predictor, rgb).heatmap))

    pdf_size = len(case_pdf(case, predictor.card, store.__getitem__, gradcam))
    results = {
        "fields": args.fields,
        "pdf_ms": median_ms(lambda: case_pdf(case, predictor.card, store.__getitem__, gradcam), args.repeats, 1),
        "pdf_no_overlays_ms": median_ms(
            lambda: case_pdf(case, predictor.card, store.__getitem__, lambda d: None), args.repeats, 1
        ),
        "pdf_bytes": pdf_size,
        "fhir_ms": median_ms(lambda: case_bundle(case, predictor.card), args.repeats * 4, 2),
        "csv_ms": median_ms(lambda: case_csv(case), args.repeats * 4, 2),
    }
    results["overlay_cost_ratio"] = round(results["pdf_ms"] / results["pdf_no_overlays_ms"], 3)
    for key, value in results.items():
        print(f"{key:>20}: {value:.1f}" if isinstance(value, float) else f"{key:>20}: {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
