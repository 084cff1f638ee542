"""Serving verbs: predict, validate, explain, serve. None of them imports torch."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from ..classes import BY_KEY, DISCLAIMER, UNCERTAIN_DISPLAY_NAME, capture_note
from ..outcomes import uncertain_reason, uncertain_reason_name
from .common import add_model_option, add_validation_options, emit, expand_inputs, progress, use_validator


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify blood smear images (validation runs first)",
        description="Validate each image, then classify it with the ONNX model: a class, or "
        "'uncertain' when the model is not sure enough (threshold from the model card). "
        "Exit status 0 when every input was accepted, 1 otherwise. " + DISCLAIMER,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    add_model_option(p)
    p.add_argument("--json", action="store_true", help="one JSON list, one object per input, in input order")
    add_validation_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "validate",
        help="check that images are usable blood smear photographs",
        description="Run only the input gate (decoding, colour, content) on each image and say why "
        "an image is rejected. Exit status 0 when every input was accepted, 1 otherwise.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--json", action="store_true", help="one JSON list, one object per input, in input order")
    add_validation_options(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "explain",
        help="Grad-CAM heat maps: <stem>.gradcam.png (overlay) + <stem>.gradcam.npy",
        description="Classify each image, then write a Grad-CAM heat map of where the model looked: "
        "an overlay PNG and the raw map as .npy, in the --out folder.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    add_model_option(p)
    p.add_argument(
        "--class",
        dest="class_key",
        default=None,
        metavar="CLASS",
        help="class to explain: a key (normal, early, mid, advanced) or a display name, any case "
        "(default: the predicted class)",
    )
    p.add_argument("--out", required=True, help="folder for the heat maps (created if missing; not a file)")
    p.add_argument("--json", action="store_true", help="one JSON list, one object per input, in input order")
    add_validation_options(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "serve",
        help="serve the web app and HTTP API (gunicorn; --debug: Flask dev server)",
        description="Serve the upload page and the JSON API (/api/v1, OpenAPI at /api/v1/openapi.json) "
        "with gunicorn until interrupted.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=None, help="gunicorn workers (default: number of cores)")
    add_model_option(p)
    p.add_argument(
        "--validator",
        default=None,
        metavar="FILE",
        help="validator calibration JSON (default: $LEUKOSTAGE_VALIDATOR, else the packaged one)",
    )
    p.add_argument("--debug", action="store_true", help="Flask's development server instead of gunicorn")
    p.add_argument(
        "--access-log",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="log each request (method, path without query string, status, size, time) to stdout, or append to "
        "FILE (default: $LEUKOSTAGE_ACCESS_LOG: 1 for stdout or a file; unset: no access log)",
    )
    p.set_defaults(func=cmd_serve)


def outcome(r: dict) -> str:
    """The table cell for an accepted image: the class with its dataset subtype, or, when no class is asserted,
    ``Uncertain (why)`` and no class name at all (the probabilities are in ``--json``, not shown as a result)."""
    if r["label"] not in BY_KEY:
        return f"{UNCERTAIN_DISPLAY_NAME} ({uncertain_reason_name(uncertain_reason(r))})"
    return f"{r['display_label']} - {r['dataset_label'] or 'no class asserted'}"


def _with_capture(line: str, r: dict) -> str:
    """A row with how its picture was taken, when there is something to say (a photo through the eyepiece)."""
    note = capture_note(r.get("capture"))
    return f"{line}\t{note}" if note else line


def table_row(r: dict) -> str:
    if not r.get("valid"):
        return rejected_row(r)
    if r["label"] not in BY_KEY:  # no class asserted: no confidence either, it would read as one class's
        return _with_capture(f"{r['file']}\t{outcome(r)}", r)
    return _with_capture(f"{r['file']}\t{outcome(r)}\tconfidence {r['confidence']:.3f}", r)


def rejected_row(r: dict) -> str:
    """A refused input: its code and the reason, which says what was measured and what to do."""
    return _with_capture(f"{r['file']}\tREJECTED [{r['code']}]\t{r['reason']}", r)


def _finish(results: list[dict], as_json: bool, disclaimer: bool = True) -> int:
    if as_json:
        print(json.dumps(results, indent=2))
    elif disclaimer:
        print(f"\n{DISCLAIMER}", file=sys.stderr)
    return 0 if all(r["valid"] for r in results) else 1


def _each_input(
    args: argparse.Namespace,
    verb: str,
    analyse: Callable[[str], dict],
    row: Callable[[dict], str],
    disclaimer: bool = True,
) -> int:
    """Every input of ``args.images`` (folders expanded), analysed in turn: a table line each as it is done, or one
    JSON list at the end; exit status 1 when any input was refused."""
    results: list[dict] = []
    for item in progress(expand_inputs(args.images), verb):
        result = item if isinstance(item, dict) else analyse(item)
        results.append(result)
        if not args.json:
            emit(row(result))
    return _finish(results, args.json, disclaimer)


def cmd_predict(args: argparse.Namespace) -> int:
    from ..predict import Predictor, analyse_path

    use_validator(args.validator)
    predictor = Predictor.load(args.model)
    return _each_input(args, "predict", lambda item: analyse_path(item, predictor, args.preset).result, table_row)


def cmd_validate(args: argparse.Namespace) -> int:
    from ..validate import validate_path

    use_validator(args.validator)
    return _each_input(
        args,
        "validate",
        lambda item: {"file": item, **validate_path(item, args.preset).to_dict()},
        lambda r: f"{r['file']}\tok" if r["valid"] else rejected_row(r),
        disclaimer=False,
    )


def heatmap_folder(out: str) -> Path:
    """The --out folder, created if missing.

    Raises:
        ValueError: --out names an existing file (say so before any work, not as a traceback after the first image).
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is an existing file; give a folder for the heat maps (created if missing)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def explained_row(r: dict) -> str:
    if not r.get("valid"):
        return rejected_row(r)
    if r["label"] not in BY_KEY:  # the map is still written, but it is not evidence for any class
        return _with_capture(f"{r['file']}\tGrad-CAM, not evidence for any class: {outcome(r)}\t{r['gradcam_png']}", r)
    return _with_capture(
        f"{r['file']}\tGrad-CAM for {r['explained_class']} (prediction {r['label']}, confidence "
        f"{r['confidence']:.3f})\t{r['gradcam_png']}",
        r,
    )


def cmd_explain(args: argparse.Namespace) -> int:
    from ..classes import parse_class
    from ..explain import explain_image, save_explanation
    from ..predict import Predictor, analyse_path

    class_key = parse_class(args.class_key).key if args.class_key is not None else None  # bad name: fail first
    use_validator(args.validator)
    out = heatmap_folder(args.out)
    predictor = Predictor.load(args.model)
    results: list[dict] = []
    used: set[str] = set()
    for item in progress(expand_inputs(args.images), "explain"):
        if isinstance(item, dict):
            result = item
        else:
            analysis = analyse_path(item, predictor, args.preset)
            result = analysis.result
            if result["valid"]:
                exp = explain_image(predictor, analysis.rgb, class_key)
                stem, n = Path(item).stem, 2
                while stem in used:  # same file name from two folders: keep both
                    stem, n = f"{Path(item).stem}-{n}", n + 1
                used.add(stem)
                png, npy = save_explanation(out, stem, analysis.rgb, exp.heatmap)
                result = {**result, "explained_class": exp.class_key, "gradcam_png": str(png), "gradcam_npy": str(npy)}
        results.append(result)
        if not args.json:
            emit(explained_row(result))
    return _finish(results, args.json)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..web.server import serve

    use_validator(args.validator)
    return serve(
        host=args.host,
        port=args.port,
        workers=args.workers,
        model=args.model,
        debug=args.debug,
        access_log=args.access_log,
    )
