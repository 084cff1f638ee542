"""Choose the case-call rule on pseudo-cases and measure it on unseen ones (``leukostage evaluate-cases``).

A pseudo-case is 10 consecutive file numbers of one class within one part of the blocked split (consecutive captures
are about one patient's, and the blocked split keeps runs of them on one side). Every field goes through the
serving pipeline (``predict.analyse_path``: the input check, then the model through ONNX Runtime; no torch), so
refused fields are refused here as they would be in a case. The rule's parameters are chosen on the validation part
only, then scored once on the test part. Outputs: ``<out>/metrics.json``, ``<out>/report.md`` and the chosen rule in
``case_rule.json`` (read by ``cases.rule.load_rule``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from ..cases.rule import RULE_PATH, CaseRule, call, is_counted
from ..classes import CLASS_KEYS, LEUKAEMIA_KEYS, NORMAL_KEY, UNCERTAIN_KEY
from .data import discover, file_number, make_split

CASE_SIZE = 10
SPLIT = "blocked"
TARGET_ACCURACY = 0.95
GRID = {
    "kind": ("mean", "vote"),
    "min_fields": (1, 2, 3, 5),
    "normal_min": (0.5, 0.6, 0.7, 0.8, 0.9),
    "min_share": (0.0, 0.3, 0.4, 0.5),
}


def pseudo_cases(ds, indices, size: int = CASE_SIZE) -> list[tuple[str, list[int]]]:
    """(true class, dataset indices) per run of ``size`` consecutive file numbers of one class; leftovers dropped."""
    cases = []
    for label, key in enumerate(CLASS_KEYS):
        members = sorted((i for i in indices if ds.labels[i] == label), key=lambda i: file_number(ds.paths[i]))
        cases += [(key, members[k : k + size]) for k in range(0, len(members) - size + 1, size)]
    return cases


def score(cases: list[tuple[str, list[dict]]], rule: CaseRule) -> dict:
    """Case-level outcome of ``rule``: right, uncertain, leukaemia called normal, normal called leukaemia."""
    calls = [(truth, call([r for r in results if is_counted(r)], rule)) for truth, results in cases]
    right = sum(t == c for t, c in calls)
    confusion = {t: {c: 0 for c in (*CLASS_KEYS, UNCERTAIN_KEY)} for t in CLASS_KEYS}
    for t, c in calls:
        confusion[t][c] += 1
    return {
        "cases": len(calls),
        "right": right,
        "accuracy": round(right / max(len(calls), 1), 4),
        "uncertain": sum(c == UNCERTAIN_KEY for _, c in calls),
        "leukaemia_called_normal": sum(t in LEUKAEMIA_KEYS and c == NORMAL_KEY for t, c in calls),
        "normal_called_leukaemia": sum(t == NORMAL_KEY and c in LEUKAEMIA_KEYS for t, c in calls),
        "confusion": confusion,
    }


def candidate_rules() -> list[CaseRule]:
    """Every rule of the grid, those closest to the plain default (``CaseRule()``) first: ties go to the plainer."""
    keys = list(GRID)
    rules = [CaseRule(**dict(zip(keys, values))) for values in itertools.product(*(GRID[k] for k in keys))]
    default = asdict(CaseRule())
    return sorted(rules, key=lambda r: sum(v != default[k] for k, v in asdict(r).items()))


def choose(val_cases: list[tuple[str, list[dict]]]) -> tuple[CaseRule, dict]:
    """The rule with no (then fewest) leukaemic cases called normal, then most cases right, then fewest uncertain."""
    best, best_key, best_score = None, None, None
    for rule in candidate_rules():
        s = score(val_cases, rule)
        key = (s["leukaemia_called_normal"], -s["right"], s["uncertain"])
        if best_key is None or key < best_key:
            best, best_key, best_score = rule, key, s
    return best, best_score


def may_overlap_training(training: dict, seed: int, fingerprint: str) -> bool:
    """Whether the test cases may hold images the model was trained on: unless the model was trained on this very
    split (same method and seed) of this very data (same fingerprint: another folder, or a subset, splits
    differently), its training part cannot be shown to be disjoint from these cases."""
    same_split = training.get("split") == SPLIT and int(training.get("seed", -1)) == seed
    return not (same_split and training.get("data_fingerprint") == fingerprint)


def _analyse_all(ds, indices, predictor, preset: str, progress: bool) -> dict[int, dict]:
    from tqdm import tqdm

    from ..predict import analyse_path

    out = {}
    for i in tqdm(sorted(indices), desc="fields", unit="img", disable=not progress):
        out[i] = analyse_path(ds.paths[i], predictor, preset).result
    return out


def _field_stats(cases: list[tuple[str, list[dict]]]) -> dict:
    fields = [r for _, rs in cases for r in rs]
    return {
        "fields": len(fields),
        "refused": sum(not r.get("valid") for r in fields),
        "counted": sum(is_counted(r) for r in fields),
        "field_accuracy_counted": round(
            sum(r.get("top_class") == t for t, rs in cases for r in rs if is_counted(r))
            / max(1, sum(is_counted(r) for r in fields)),
            4,
        ),
    }


def run(
    data: str | Path,
    model: str | Path | None = None,
    seed: int | None = None,
    out: str | Path = "reports/cases",
    rule_out: str | Path | None = None,
    preset: str | None = None,
    progress: bool = True,
) -> dict:
    """Choose the rule on the validation part, score it on the test part, write the reports and the rule."""
    from ..predict import Predictor
    from ..validate import DEFAULT_PRESET

    predictor = Predictor.load(model)
    training = predictor.card.get("training", {})
    seed = int(training.get("seed", 42)) if seed is None else seed
    preset = preset or DEFAULT_PRESET
    ds = discover(data)
    split = make_split(ds, SPLIT, seed)
    parts = {p: pseudo_cases(ds, split[p]) for p in ("val", "test")}
    needed = {i for cases in parts.values() for _, idx in cases for i in idx}
    results = _analyse_all(ds, needed, predictor, preset, progress)
    cases = {p: [(t, [results[i] for i in idx]) for t, idx in cs] for p, cs in parts.items()}
    rule, val_score = choose(cases["val"])
    test_score = score(cases["test"], rule)
    overlap = may_overlap_training(training, seed, ds.fingerprint)
    meta = {
        "split": SPLIT,
        "seed": seed,
        "case_size": CASE_SIZE,
        "data": str(ds.root),
        "data_fingerprint": ds.fingerprint,
        "model": predictor.info,
        "model_sha256": hashlib.sha256(predictor.path.read_bytes()).hexdigest()[:16],
        "model_training_split": {
            "split": training.get("split"),
            "seed": training.get("seed"),
            "data_fingerprint": training.get("data_fingerprint"),
        },
        "test_overlaps_training": overlap,
        "validation_preset": preset,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "leukostage evaluate-cases" + (f" --model {model}" if model else ""),
    }
    metrics = {
        "meta": meta,
        "rule": asdict(rule),
        "rule_sentence": rule.describe(),
        "validation": {**val_score, **_field_stats(cases["val"])},
        "test": {**test_score, **_field_stats(cases["test"])},
        "target": {
            "accuracy": TARGET_ACCURACY,
            "leukaemia_called_normal": 0,
            "met": test_score["accuracy"] >= TARGET_ACCURACY and not test_score["leukaemia_called_normal"],
        },
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(metrics))
    rule_path = Path(rule_out) if rule_out else RULE_PATH
    rule_path.write_text(
        json.dumps(
            {
                "rule": asdict(rule),
                "chosen_on": f"{SPLIT} split seed {seed}, val part, pseudo-cases of {CASE_SIZE}",
                "model": predictor.info,
                "data_fingerprint": ds.fingerprint,
                "validation": {k: val_score[k] for k in ("cases", "right", "accuracy", "leukaemia_called_normal")},
                "test": {k: test_score[k] for k in ("cases", "right", "accuracy", "leukaemia_called_normal")},
            },
            indent=2,
        )
        + "\n"
    )
    return metrics


def _confusion_md(confusion: dict) -> str:
    cols = [*CLASS_KEYS, UNCERTAIN_KEY]
    rows = ["| true \\ called | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    rows += [f"| {t} | " + " | ".join(str(confusion[t][c]) for c in cols) + " |" for t in CLASS_KEYS]
    return "\n".join(rows)


def report_markdown(m: dict) -> str:
    meta, val, test = m["meta"], m["validation"], m["test"]
    trained = meta["model_training_split"]
    warn = (
        "\n**Caution:** the model was trained on the "
        f"{trained['split']} split (seed {trained['seed']}) of data {trained.get('data_fingerprint')}, and these "
        f"cases come from the {meta['split']} split (seed {meta['seed']}) of data {meta['data_fingerprint']}, so "
        "they may include images it was trained on; the numbers may be optimistic. Re-run this command on the data "
        "and split the model was trained on (or with a model trained on the blocked split of this data).\n"
        if meta["test_overlaps_training"]
        else ""
    )
    lines = [
        "# Case-level calls on unseen patients (pseudo-cases)",
        "",
        f"Research decision support, not a diagnosis. Reproduce with `{meta['command']}`.",
        warn,
        *(f"- {k}: {v}" for k, v in meta.items() if k != "command"),
        "",
        "## Rule (chosen on the validation part)",
        "",
        m["rule_sentence"],
        "",
        f"Parameters: `{json.dumps(m['rule'])}`",
        "",
        "| part | cases | right | accuracy | uncertain | leukaemia called normal | normal called leukaemia | "
        "fields | refused | field accuracy (counted) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in (("validation", val), ("test", test)):
        lines.append(
            f"| {name} | {s['cases']} | {s['right']} | {s['accuracy']:.3f} | {s['uncertain']} | "
            f"{s['leukaemia_called_normal']} | {s['normal_called_leukaemia']} | {s['fields']} | "
            f"{s['refused']} | {s['field_accuracy_counted']:.3f} |"
        )
    met = "met" if m["target"]["met"] else "NOT met"
    lines += [
        "",
        f"Target (>= {m['target']['accuracy']:.0%} of test cases right, none with leukaemia called normal): **{met}**.",
        "",
        "## Test confusion (cases)",
        "",
        _confusion_md(test["confusion"]),
        "",
    ]
    return "\n".join(lines)
