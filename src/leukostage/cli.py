"""Command line: parse arguments, call library functions, format output. Torch is imported only by training verbs."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .classes import DISCLAIMER
from .cli_cases import register as register_cases
from .data import SPLIT_METHODS, default_data_dir
from .validate import DEFAULT_PRESET, PRESETS


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on the Table 2 folder layout")
    p.add_argument("--data", default=str(default_data_dir()), help="dataset folder (default: $LEUKOSTAGE_DATA)")
    p.add_argument("--out", required=True, help="run folder for checkpoint, log, curves")
    p.add_argument("--arch", default="paper", choices=("paper", "lite0"),
                   help="paper: Table 4 CNN at 128 px, from scratch; lite0: EfficientNet-Lite0 at 224 px from ImageNet "
                   "weights (use with --recipe transfer)")
    p.add_argument("--split", default="random", choices=SPLIT_METHODS)
    p.add_argument("--recipe", default="paper", choices=("paper", "robust", "transfer"),
                   help="paper: Table 3 augmentation; robust: plus colour normalisation in the model, stain "
                   "jitter and a cell-attention loss (the shortcut fix); transfer: fine-tuning a pretrained body "
                   "(colour normalisation, stain jitter, rotations, AdamW one-cycle with warm-up, lower body rate, "
                   "label smoothing); see leukostage.train.RECIPES")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--limit-per-class", type=int, default=0, help="train on a small per-class subset (smoke runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    cfg = TrainConfig(
        data=args.data, out=args.out, arch=args.arch, split=args.split, recipe=args.recipe, seed=args.seed, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, precision=args.precision, limit_per_class=args.limit_per_class,
    )
    summary = train(cfg, progress=not args.quiet)
    print(json.dumps({k: summary[k] for k in ("best_epoch", "best_val_loss", "epochs_run", "median_epoch_seconds")}))
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint or ONNX model on a split; writes metrics.json + report.md")
    p.add_argument("--model", required=True, help="a run's best.pt, or an exported .onnx")
    p.add_argument("--data", default=str(default_data_dir()))
    p.add_argument("--split", default=None, choices=SPLIT_METHODS, help="default: the split the model was trained on")
    p.add_argument("--part", default="test", choices=("train", "val", "test"))
    p.add_argument("--seed", type=int, default=None, help="default: the model's training seed")
    p.add_argument("--out", default=None, help="report folder (default: reports/<model>-<split>)")
    p.add_argument("--external", nargs="+", default=None, metavar="DIR",
                   help="instead: run the serving pipeline on image folders outside the training data")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_model, score_external

    if args.external:
        print(json.dumps(score_external(args.model, args.external, args.out, progress=sys.stderr.isatty()), indent=2))
        return 0
    out = evaluate_model(args.model, args.data, split=args.split, part=args.part, seed=args.seed, out=args.out)
    print(json.dumps(out, indent=2))
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX + model card, with test-split metrics")
    p.add_argument("--checkpoint", required=True, help="a run's best.pt")
    p.add_argument("--out", required=True, help="ONNX file to write, e.g. models/robust.onnx (the card goes beside it)")
    p.add_argument("--name", default=None, help="model name in the card (default: the file stem)")
    p.add_argument("--data", default=str(default_data_dir()), help="to score the test split(s) for the card")
    p.add_argument("--metrics", nargs="*", default=[], help="metrics.json files to copy into the card")


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

    card = export_model(args.checkpoint, args.out, name=args.name, metrics_files=args.metrics, data=args.data)
    print(f"wrote {args.out} and its card ({card['name']} {card['version']})")
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images (validation runs first)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--model", default=None, help="ONNX model (default: the model shipped in the package)")
    p.add_argument("--json", action="store_true", help="one JSON list, one object per input, in input order")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESETS, help="validation preset")


def expand_inputs(items: list[str]) -> list[str | dict]:
    """Folders become their image files (sorted); a folder with none becomes an error entry."""
    from .imaging import IMAGE_SUFFIXES

    out: list[str | dict] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                out.append({"file": item, "valid": False, "code": "unreadable",
                            "reason": f"{item} is a folder with no images ({', '.join(IMAGE_SUFFIXES)})"})
            out.extend(files)
        else:
            out.append(item)
    return out


def _table(results: list[dict]) -> str:
    rows = []
    for r in results:
        if r.get("valid"):
            outcome = f"{r['display_label']} ({r['dataset_label'] or 'no class asserted'})"
            rows.append(f"{r['file']}\t{outcome}\tconfidence {r['confidence']:.3f}")
        else:
            rows.append(f"{r['file']}\tREJECTED [{r['code']}]\t{r['reason']}")
    return "\n".join(rows)


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import Predictor, analyse_path

    predictor = Predictor.load(args.model)
    results = [item if isinstance(item, dict) else analyse_path(item, predictor, args.preset).result
               for item in expand_inputs(args.images)]
    print(json.dumps(results, indent=2) if args.json else _table(results))
    if not args.json:
        print(f"\n{DISCLAIMER}", file=sys.stderr)
    return 0 if all(r["valid"] for r in results) else 1


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check that images are usable blood smear photographs")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESETS)


def cmd_validate(args: argparse.Namespace) -> int:
    from .validate import validate_path

    results = [item if isinstance(item, dict) else {"file": item, **validate_path(item, args.preset).to_dict()}
               for item in expand_inputs(args.images)]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['file']}\t" + ("ok" if r["valid"] else f"REJECTED [{r['code']}]\t{r['reason']}"))
    return 0 if all(r["valid"] for r in results) else 1


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate-validator", help="fit the input validator on real data (validator.json) and write "
                       "its held-out report (reports/validation/report.md + metrics.json)")
    p.add_argument("--data", default=str(default_data_dir()), help="data folder (default: $LEUKOSTAGE_DATA)")
    p.add_argument("--seed", type=int, default=42, help="split and generator seed (--report-only: the JSON's)")
    p.add_argument("--out", default=None, help="validator JSON (default: the packaged leukostage/validator.json)")
    p.add_argument("--report", default="reports/validation", help="report folder")
    p.add_argument("--report-only", action="store_true", help="score the existing JSON without refitting")
    p.add_argument("--no-ablations", action="store_true", help="skip the leave-one-source-out refits")


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import CalibrationConfig, run, summary
    from .validate import VALIDATOR_PATH

    metrics = run(CalibrationConfig(data=args.data, seed=args.seed), args.out or VALIDATOR_PATH, args.report,
                  refit=not args.report_only, ablations=not args.no_ablations)
    print(json.dumps(summary(metrics), indent=1))
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the web app and HTTP API (gunicorn; --debug: Flask dev server)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=None, help="gunicorn workers (default: number of cores)")
    p.add_argument("--model", default=None)
    p.add_argument("--debug", action="store_true", help="Flask's development server instead of gunicorn")


def cmd_serve(args: argparse.Namespace) -> int:
    from .web import serve

    return serve(host=args.host, port=args.port, workers=args.workers, model=args.model, debug=args.debug)


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="Grad-CAM heat maps: <stem>.gradcam.png (overlay) + <stem>.gradcam.npy")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--model", default=None, help="ONNX model (default: the model shipped in the package)")
    p.add_argument("--class", dest="class_key", default=None, metavar="KEY",
                   help="class to explain (default: the predicted class)")
    p.add_argument("--out", required=True, help="folder for the heat maps (created if missing)")
    p.add_argument("--json", action="store_true", help="one JSON list, one object per input, in input order")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESETS, help="validation preset")


def cmd_explain(args: argparse.Namespace) -> int:
    from .classes import class_info
    from .explain import explain_image, save_explanation
    from .predict import Predictor, analyse_path

    if args.class_key is not None:
        class_info(args.class_key)  # a bad key fails before any work, listing the valid keys
    predictor = Predictor.load(args.model)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    used: set[str] = set()
    for item in expand_inputs(args.images):
        if isinstance(item, dict):
            results.append(item)
            continue
        analysis = analyse_path(item, predictor, args.preset)
        result = analysis.result
        if result["valid"]:
            exp = explain_image(predictor, analysis.rgb, args.class_key)
            stem, n = Path(item).stem, 2
            while stem in used:  # same file name from two folders: keep both
                stem, n = f"{Path(item).stem}-{n}", n + 1
            used.add(stem)
            png, npy = save_explanation(args.out, stem, analysis.rgb, exp.heatmap)
            result = {**result, "explained_class": exp.class_key, "gradcam_png": str(png), "gradcam_npy": str(npy)}
        results.append(result)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if r.get("valid"):
                print(f"{r['file']}\tGrad-CAM for {r['explained_class']} (prediction {r['label']}, confidence "
                      f"{r['confidence']:.3f})\t{r['gradcam_png']}")
            else:
                print(f"{r['file']}\tREJECTED [{r['code']}]\t{r['reason']}")
        print(f"\n{DISCLAIMER}", file=sys.stderr)
    return 0 if all(r["valid"] for r in results) else 1


def _add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="shortcut audit on the model's test split: Grad-CAM on cells, accuracy with "
                       "scale bar masked, background replaced, colour shifted; writes metrics.json + report.md")
    p.add_argument("--model", required=True, help="a run's best.pt, or an exported .onnx")
    p.add_argument("--data", default=str(default_data_dir()), help="dataset folder (needs segmented/ beside original/)")
    p.add_argument("--split", default=None, choices=SPLIT_METHODS,
                   help="default: the split the model was trained on (any other is refused)")
    p.add_argument("--out", default=None, help="report folder (default: reports/audit-<model>-<split>)")


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import run_audit

    doc = run_audit(args.model, args.data, split=args.split, out=args.out)
    print(json.dumps({"report": doc["meta"]["report"], "drops_points": doc["drops_points"], "checks": doc["checks"]},
                     indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leukostage",
        description="Blood smear ALL subtype classifier. Research decision support, not a diagnosis.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_export(sub)
    _add_predict(sub)
    _add_validate(sub)
    _add_serve(sub)
    _add_explain(sub)
    _add_audit(sub)
    _add_calibrate(sub)
    register_cases(sub, COMMANDS)  # db, users, evaluate-cases; serve checks the case database first
    return parser


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "export": cmd_export, "predict": cmd_predict,
            "validate": cmd_validate, "serve": cmd_serve,
            "explain": cmd_explain, "audit": cmd_audit, "calibrate-validator": cmd_calibrate}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"leukostage {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
