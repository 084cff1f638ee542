"""``leukostage evaluate-cases`` (training/evaluate_cases.py), behind the README's "39/39 test cases right": the
pseudo-cases, the choice of the case rule, and the check that the test cases are patients the model never saw, on
real images through the shipped model (a few cases per class, so it stays fast)."""

from __future__ import annotations

import json

import pytest

from leukostage.cases.rule import CaseRule, call, is_counted
from leukostage.classes import CLASS_KEYS
from leukostage.predict import analyse_path
from leukostage.training import evaluate_cases
from leukostage.training.data import discover, file_number, make_split
from leukostage.training.evaluate_cases import CASE_SIZE, GRID, choose, may_overlap_training, pseudo_cases, score


@pytest.fixture(scope="module")
def dataset(data_dir):
    return discover(data_dir)


@pytest.fixture(scope="module")
def blocked(dataset):
    return make_split(dataset, "blocked", 42)


@pytest.fixture(scope="module")
def val_cases(dataset, blocked, predictor) -> dict[str, list[list[dict]]]:
    """The first two validation pseudo-cases of each class, every field through the serving pipeline."""
    out: dict[str, list[list[dict]]] = {k: [] for k in CLASS_KEYS}
    for truth, idx in pseudo_cases(dataset, blocked["val"]):
        if len(out[truth]) < 2:
            out[truth].append([analyse_path(dataset.paths[i], predictor).result for i in idx])
    return out


def test_pseudo_cases_are_runs_of_ten_consecutive_files_of_one_class_in_one_part(dataset, blocked):
    for part in ("val", "test"):
        members = set(blocked[part].tolist())
        cases = pseudo_cases(dataset, blocked[part])
        # 60 Normal, 120 Early, 120 Mid, 90 Advanced images per part: 6 + 12 + 12 + 9 cases (the README's 39)
        assert [t for t, _ in cases].count("normal") == 6 and len(cases) == 39
        seen: set[int] = set()
        for truth, idx in cases:
            assert len(idx) == CASE_SIZE and set(idx) <= members and not seen & set(idx)
            seen |= set(idx)
            assert {CLASS_KEYS[dataset.labels[i]] for i in idx} == {truth}
            numbers = [file_number(dataset.paths[i]) for i in idx]
            assert numbers == sorted(numbers) and len(set(numbers)) == CASE_SIZE
            # consecutive: no other file of this class in this part falls between the case's first and last
            between = [
                i
                for i in members - set(idx)
                if dataset.labels[i] == dataset.labels[idx[0]]
                and numbers[0] < file_number(dataset.paths[i]) < numbers[-1]
            ]
            assert between == [], (truth, numbers)
        assert not seen & set(blocked["train"].tolist())  # no training image in any case


def test_the_shipped_rule_calls_real_cases_right(val_cases):
    rule = CaseRule()
    for truth, cases in val_cases.items():
        for results in cases:
            assert call([r for r in results if is_counted(r)], rule) == truth


def test_choose_prefers_no_leukaemia_called_normal_then_the_plainest_rule(val_cases):
    """Real fields: normal cases, an Early case, and an Early case whose sample shows mostly normal-looking fields
    (6 Normal fields and 4 Early ones). The plain mean rule calls the mixed case normal (leukaemia missed); the
    chosen rule must not, and among those that do not, it is the one closest to the plain rule."""
    normal_a, normal_b = val_cases["normal"]
    early_a, early_b = val_cases["early"]
    mixed = normal_b[:6] + early_b[:4]
    cases = [("normal", normal_a), ("normal", normal_b), ("early", early_a), ("early", mixed)]
    plain = score(cases, CaseRule())
    assert plain["leukaemia_called_normal"] == 1 and plain["right"] == 3
    rule, best = choose(cases)
    assert best["leukaemia_called_normal"] == 0 and best["right"] == 4 and best == score(cases, rule)
    mean_normal = sum(r["probabilities"]["normal"] for r in mixed) / len(mixed)
    expected = min(v for v in GRID["normal_min"] if v > mean_normal)  # the smallest margin that catches it
    assert rule == CaseRule(normal_min=expected)


def test_choose_keeps_the_plain_rule_when_it_is_already_right(val_cases):
    cases = [(truth, results) for truth, cs in val_cases.items() for results in cs]
    rule, best = choose(cases)
    assert rule == CaseRule() and best["right"] == len(cases) == 8 and best["uncertain"] == 0


def test_no_overlap_needs_the_same_split_seed_and_data(dataset):
    trained = {"split": "blocked", "seed": 42, "data_fingerprint": dataset.fingerprint}
    assert may_overlap_training(trained, 42, dataset.fingerprint) is False
    assert may_overlap_training({**trained, "split": "random"}, 42, dataset.fingerprint) is True
    assert may_overlap_training(trained, 7, dataset.fingerprint) is True
    assert may_overlap_training(trained, 42, "another-folder") is True  # a subset or other data splits differently
    assert may_overlap_training({"split": "blocked", "seed": 42}, 42, dataset.fingerprint) is True  # cannot tell


def few_cases(limit: int):
    """pseudo_cases cut to the first ``limit`` cases of each class (the real split, fewer images to analyse)."""
    full = evaluate_cases.pseudo_cases

    def cut(ds, indices, size=CASE_SIZE):
        cases = full(ds, indices, size)
        return [c for k in CLASS_KEYS for c in [c for c in cases if c[0] == k][:limit]]

    return cut


def test_evaluate_cases_end_to_end_on_the_real_split(data_dir, tmp_path, monkeypatch, capsys):
    """The command as the README runs it (a case per class per part): the rule file, the reports, and no overlap."""
    from leukostage.cli import main

    monkeypatch.setattr(evaluate_cases, "pseudo_cases", few_cases(1))
    rule_out = tmp_path / "case_rule.json"
    args = ["evaluate-cases", "--data", str(data_dir), "--out", str(tmp_path / "r"), "--rule-out", str(rule_out)]
    assert main([*args, "--quiet"]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["meta"]["test_overlaps_training"] is False
    assert metrics["test"]["cases"] == 4 and metrics["test"]["right"] == 4 and metrics["target"]["met"]
    assert metrics["test"]["leukaemia_called_normal"] == 0
    written = json.loads(rule_out.read_text())
    assert written["rule"] == metrics["rule"] and written["chosen_on"].startswith("blocked split seed 42, val part")
    report = (tmp_path / "r" / "report.md").read_text()
    assert "Caution" not in report and "**met**" in report
    assert json.loads(capsys.readouterr().out)["test"]["right"] == 4


def test_evaluate_cases_on_other_data_warns_that_test_cases_may_have_been_trained_on(data_dir, tmp_path, monkeypatch):
    """A subset of the data splits differently from the one the model was trained on: the no-overlap check must say
    so (it once compared only the split's name and seed)."""
    subset = tmp_path / "subset"
    for folder in ("normal", "cancerous/early", "cancerous/mid", "cancerous/advanced"):
        (subset / folder).mkdir(parents=True)
        for src in sorted((data_dir / "taleqani_all" / "original" / folder).glob("*.jpg"))[:100]:
            (subset / folder / src.name).symlink_to(src.resolve())
    monkeypatch.setattr(evaluate_cases, "pseudo_cases", few_cases(1))
    metrics = evaluate_cases.run(subset, out=tmp_path / "r", rule_out=tmp_path / "rule.json", progress=False)
    assert metrics["meta"]["test_overlaps_training"] is True
    assert "**Caution:**" in (tmp_path / "r" / "report.md").read_text()
