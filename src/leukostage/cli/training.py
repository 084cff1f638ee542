"""Training-path verbs: train, evaluate, export, quantize, audit, calibrate-validator.

Torch is imported inside each verb."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..training.data import SPLIT_METHODS, default_data_dir


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on the Table 2 folder layout",
        description="Train a model (needs the 'train' extra: torch). Writes best.pt, a log and "
        "curves into --out; stops early when the validation loss stops improving.",
    )
    p.add_argument("--data", default=str(default_data_dir()), help="dataset folder (default: $LEUKOSTAGE_DATA)")
    p.add_argument("--out", required=True, help="run folder for checkpoint, log, curves")
    p.add_argument(
        "--arch",
        default="paper",
        choices=("paper", "lite0"),
        help="paper: Table 4 CNN at 128 px, from scratch; lite0: EfficientNet-Lite0 at 224 px from ImageNet "
        "weights (use with --recipe transfer)",
    )
    p.add_argument("--split", default="random", choices=SPLIT_METHODS)
    p.add_argument(
        "--recipe",
        default="paper",
        choices=("paper", "robust", "transfer", "transfer-cells", "capture"),
        help="paper: Table 3 augmentation; robust: plus colour normalisation in the model, stain "
        "jitter and a cell-attention loss (the shortcut fix); transfer: fine-tuning a pretrained body "
        "(colour normalisation, stain jitter, rotations, AdamW one-cycle with warm-up, lower body rate, "
        "label smoothing); transfer-cells: transfer plus the cell-attention loss; see "
        "leukostage.training.train.RECIPES",
    )
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--limit-per-class", type=int, default=0, help="train on a small per-class subset (smoke runs)")
    p.add_argument(
        "--attention-weight",
        type=float,
        default=None,
        metavar="W",
        help="weight of the cell-attention loss instead of the recipe's (0 turns it off); choose it on "
        "the validation part (audit --part val)",
    )
    p.add_argument(
        "--clean-share",
        type=float,
        default=None,
        metavar="S",
        help="capture recipes: the share of each batch trained without the capture chain, as the training "
        "hospital's microscope shows it (default: the recipe's, 0)",
    )
    p.add_argument(
        "--keep",
        default="val_loss",
        choices=("val_loss", "val_accuracy", "last"),
        help="which epoch best.pt keeps: the lowest validation loss (default), the highest validation accuracy "
        "(ties to the lower loss), or the last epoch",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.train import TrainConfig, train

    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        arch=args.arch,
        split=args.split,
        recipe=args.recipe,
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        precision=args.precision,
        limit_per_class=args.limit_per_class,
        attention_weight=args.attention_weight,
        clean_share=args.clean_share,
        keep=args.keep,
    )
    summary = train(cfg, progress=not args.quiet)
    shown = ("best_epoch", "kept_val_loss", "best_val_loss", "epochs_run", "median_epoch_seconds")
    print(json.dumps({k: summary[k] for k in shown}))
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a checkpoint or ONNX model on a split; writes metrics.json + report.md",
        description="Score a model on the held-out part of the split it was trained with (another "
        "split, seed or dataset fingerprint is refused), or with --external on other image folders.",
    )
    p.add_argument("--model", required=True, help="a run's best.pt, or an exported .onnx")
    p.add_argument("--data", default=str(default_data_dir()))
    p.add_argument("--split", default=None, choices=SPLIT_METHODS, help="default: the split the model was trained on")
    p.add_argument("--part", default="test", choices=("train", "val", "test"))
    p.add_argument("--seed", type=int, default=None, help="default: the model's training seed")
    p.add_argument("--out", default=None, help="report folder (default: reports/<model>-<split>)")
    p.add_argument(
        "--external",
        nargs="+",
        default=None,
        metavar="DIR",
        help="instead: run the serving pipeline on image folders outside the training data",
    )
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..training.evaluate import evaluate_model, score_external

    if args.external:
        print(json.dumps(score_external(args.model, args.external, args.out, progress=sys.stderr.isatty()), indent=2))
        return 0
    out = evaluate_model(args.model, args.data, split=args.split, part=args.part, seed=args.seed, out=args.out)
    print(json.dumps(out, indent=2))
    return 0


def _add_card_options(p: argparse.ArgumentParser, whose: str) -> None:
    """--name, --metrics, --external: what ``export`` and ``quantize`` put into the card they write."""
    p.add_argument("--name", default=None, help="model name in the card (default: the file stem)")
    p.add_argument(
        "--metrics",
        nargs="*",
        default=[],
        help="metrics.json files to copy into the card (their data fingerprint must match the model's training data)",
    )
    p.add_argument(
        "--external",
        nargs="*",
        default=[],
        metavar="REPORT",
        help=f"`evaluate --external` metrics.json files ({whose}, on other laboratories' images) to copy into the card",
    )


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX + model card, with test-split metrics",
        description="Export a checkpoint to ONNX and write its model card (preprocessing, classes, "
        "calibration, decision threshold, metrics) beside it.",
    )
    p.add_argument("--checkpoint", required=True, help="a run's best.pt")
    p.add_argument("--out", required=True, help="ONNX file to write, e.g. models/robust.onnx (the card goes beside it)")
    p.add_argument("--data", default=str(default_data_dir()), help="to score the test split(s) for the card")
    _add_card_options(p, "of this model")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..training.export import export_model

    card = export_model(
        args.checkpoint,
        args.out,
        name=args.name,
        metrics_files=args.metrics,
        data=args.data,
        external_files=args.external,
    )
    print(f"wrote {args.out} and its card ({card['name']} {card['version']})")
    return 0


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="int8 version of an exported lite0 model (the served file), with its card",
        description="Quantise an exported float model to int8 (static, calibrated on its split's "
        "training part), choose its decision thresholds again on the validation part, score the test "
        "part, and write its card (with how far it moved from the float reference).",
    )
    p.add_argument("--model", required=True, help="the float .onnx written by `export` (its card beside it)")
    p.add_argument("--out", required=True, help="int8 ONNX file to write (the card goes beside it)")
    p.add_argument(
        "--data",
        default=str(default_data_dir()),
        help="the model's training data (calibration, thresholds, test metrics)",
    )
    _add_card_options(p, "of the quantised model")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    from ..training.quantize import quantize_model

    card = quantize_model(
        args.model, args.out, args.data, name=args.name, metrics_files=args.metrics, external_files=args.external
    )
    moved = card["quantization"]["val_change_from_reference"]
    print(f"wrote {args.out} and its card ({card['name']} {card['version']}); on the val part: {json.dumps(moved)}")
    return 0


def _add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="shortcut audit on the model's test split: Grad-CAM on cells, accuracy with "
        "scale bar masked, background replaced, colour shifted; writes metrics.json + report.md",
        description="Does the model look at cells? Grad-CAM mass on cells, and accuracy when the "
        "scale bar is masked, the background replaced or the colours shifted.",
    )
    p.add_argument("--model", required=True, help="a run's best.pt, or an exported .onnx")
    p.add_argument("--data", default=str(default_data_dir()), help="dataset folder (needs segmented/ beside original/)")
    p.add_argument(
        "--split",
        default=None,
        choices=SPLIT_METHODS,
        help="default: the split the model was trained on (any other is refused)",
    )
    p.add_argument("--out", default=None, help="report folder (default: reports/audit-<model>-<split>)")
    p.add_argument(
        "--part",
        default="test",
        choices=("val", "test"),
        help="the part audited (default: test; val where a training setting is chosen by the audit)",
    )
    p.add_argument("--no-examples", action="store_true", help="numbers only: no example heat-map images")
    p.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from ..training.audit import run_audit

    doc = run_audit(
        args.model, args.data, split=args.split, out=args.out, examples=not args.no_examples, part=args.part
    )
    print(
        json.dumps(
            {"report": doc["meta"]["report"], "drops_points": doc["drops_points"], "checks": doc["checks"]}, indent=2
        )
    )
    return 0


def _add_calibrate_validator(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate-validator",
        help="fit the input validator on real data and write it to a named "
        "file, with its held-out report (reports/validation/report.md + metrics.json)",
        description="Fit the input validator (colour thresholds + content check) on real data and "
        "score it on held-out images. The calibration goes to --out, never silently over an "
        "existing file (the packaged validator.json included); serve or predict with it through "
        "--validator FILE or $LEUKOSTAGE_VALIDATOR.",
    )
    p.add_argument("--data", default=str(default_data_dir()), help="data folder (default: $LEUKOSTAGE_DATA)")
    p.add_argument("--seed", type=int, default=42, help="split and generator seed (--report-only: the JSON's)")
    p.add_argument(
        "--out", default=None, metavar="FILE", help="validator JSON to write (required unless --report-only)"
    )
    p.add_argument("--overwrite", action="store_true", help="allow --out to replace an existing file")
    p.add_argument(
        "--validator",
        default=None,
        metavar="FILE",
        help="--report-only: the validator JSON to score (default: $LEUKOSTAGE_VALIDATOR, else the packaged one)",
    )
    p.add_argument("--report", default="reports/validation", help="report folder")
    p.add_argument("--report-only", action="store_true", help="score an existing JSON without refitting")
    p.add_argument("--no-ablations", action="store_true", help="skip the leave-one-source-out refits")
    p.add_argument(
        "--capture",
        action="store_true",
        help="the capture layer too: calibration smears also get the model's capture chain (stain, focus, light, "
        "noise, JPEG, eyepiece photos), and the capture thresholds are chosen on the blocked split",
    )
    p.set_defaults(func=cmd_calibrate)
    _add_adapt(sub)


def _add_adapt(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt the model to a laboratory from its own labelled fields: a new model file and card",
        description="Fine-tune the base model on a laboratory's reviewed fields (split by sample into adaptation "
        "and validation parts), keep what it knew (replay of its training images, or distillation), refit the "
        "domain check and choose the thresholds on the laboratory's validation part. Writes OUT (int8), its float "
        "graph beside it and their cards; the base model is never changed. Needs the 'train' extra (torch).",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data",
        help="the laboratory's fields: normal/, cancerous/early|mid|advanced/ (optionally "
        "a sub-folder per sample inside each)",
    )
    source.add_argument(
        "--from-cases",
        action="store_true",
        help="the fields of signed-off cases in the case database ($LEUKOSTAGE_DATABASE_URL, default the "
        "instance's SQLite), each labelled by the reviewer's override, else the case's call in force (an amended "
        "call wins); open and non-diagnostic cases, refused, removed and duplicate fields never count; each case is "
        "one sample, and its export is an audit event (exported_for_adaptation)",
    )
    p.add_argument("--out", required=True, help="the adapted model file to write, NAME.onnx (a new file)")
    p.add_argument("--base", default=None, help="the model to adapt (default: $LEUKOSTAGE_MODEL, else the shipped one)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--replay",
        default=None,
        metavar="DIR",
        help="the base model's training data, replayed so it "
        "keeps what it knew (default: $LEUKOSTAGE_DATA when it holds them; else distillation only)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_adapt)


def cmd_adapt(args: argparse.Namespace) -> int:
    from ..training.adapt import AdaptConfig, adapt

    if args.epochs < 1:
        raise ValueError("--epochs must be at least 1")
    cfg = AdaptConfig(
        data=args.data,
        out=args.out,
        base=args.base,
        epochs=args.epochs,
        seed=args.seed,
        replay=args.replay,
        from_cases=args.from_cases,
    )
    card = adapt(cfg, progress=not args.quiet and sys.stderr.isatty())
    info = card["adaptation"]
    lab = card["metrics"]["laboratory_val"]
    print(f"wrote {args.out} and its card ({card['name']}, adapted from {info['base']['name']})")
    if args.from_cases:
        cases = info["laboratory"]["cases"]
        print(
            f"from {info['laboratory']['fields']} fields of {len(cases)} signed-off cases (each export recorded in "
            "the case's audit trail)"
        )
    for line in gate_notes(info["laboratory"], card.get("gate"), args.out):
        print(line)
    print(f"classes adapted: {', '.join(info['classes_adapted'])}")
    for key, why in info["classes_not_adapted"].items():
        print(f"not adapted: {key}: {why}")
    for name in ("base", "adapted"):
        m = lab[name]
        print(
            f"{name:8s} on the laboratory's validation part: answered {m['coverage']:.1%}, accuracy among answered "
            f"{m['selective_accuracy']:.3f}, leukaemia called Normal {m['leukaemia_called_normal']}"
        )
    advice = adaptation_advice(lab["base"], lab["adapted"])
    if advice:
        print(advice)
    return 0


def gate_notes(laboratory: dict, gate: dict | None, out: str) -> list[str]:
    """What the serving gate made of the laboratory's fields: the validator ``adapt`` wrote where the laboratory's
    smears scored under the content threshold (it goes with the model), and the fields still refused (left out, and
    serving refuses such fields too: adapt changes the model and at most the content threshold, not the gate)."""
    lines = []
    if gate is not None:
        lines.append(
            f"the validator's content threshold for this laboratory: {gate['content_threshold']} (was "
            f"{gate['content_threshold_was']}; {gate['fields_let_through']} of your fields now pass); "
            f"{gate['validator']} beside {Path(out).name} is served with it: copy both"
        )
    refused = laboratory["refused_by_validator"]
    if refused["count"]:
        lines.append(
            f"note: the gate refused {refused['count']} of the {laboratory['fields']} fields ({refused['codes']}); "
            "they were left out, and serving refuses such fields too: retake them as each refusal says, or check "
            "that they are usable smear fields"
        )
    return lines


def adaptation_advice(base: dict, adapted: dict) -> str | None:
    """A warning when the adapted model is no better than the base on the laboratory's own validation part (fewer
    answered, less accurate among them, or more leukaemia called Normal): serving it would be a step back."""
    missed = "leukaemia_called_normal"
    checks = (
        ("answers fewer fields", adapted["coverage"] < base["coverage"]),
        ("is less accurate among them", (adapted["selective_accuracy"] or 0) < (base["selective_accuracy"] or 0)),
        ("calls more leukaemia fields Normal", adapted[missed] > base[missed]),
    )
    worse = [what for what, lost in checks if lost]
    if not worse:
        return None
    return (
        f"note: on the laboratory's validation part the adapted model {' and '.join(worse)} than the base; keep "
        "serving the base, or adapt again with more reviewed fields"
    )


def calibration_target(args: argparse.Namespace) -> Path:
    """The validator file this run reads (--report-only) or writes.

    Raises:
        ValueError: no --out for a refit, or --out exists and --overwrite was not given.
    """
    from ..validate import active_validator_path

    if args.report_only:
        return Path(args.validator) if args.validator else active_validator_path()
    if args.out is None:
        raise ValueError(
            "--out FILE is required: name the validator JSON to write (then use it with --validator "
            "FILE); the packaged validator.json is not replaced implicitly"
        )
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"--out {out} exists; pass --overwrite to replace it, or name a new file")
    return out


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..training.calibrate import CalibrationConfig, run, summary

    target = calibration_target(args)
    metrics = run(
        CalibrationConfig(data=args.data, seed=args.seed, capture=args.capture),
        target,
        args.report,
        refit=not args.report_only,
        ablations=not args.no_ablations,
    )
    print(json.dumps(summary(metrics), indent=1))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training verbs, one ``_add_<verb>`` each."""
    _add_train(sub)
    _add_evaluate(sub)
    _add_export(sub)
    _add_quantize(sub)
    _add_audit(sub)
    _add_calibrate_validator(sub)
