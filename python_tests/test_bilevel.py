"""The bi-level trainer (d2d_ext.bilevel) and the train / test / select commands."""

import dataclasses
import json
import math
import re
import shutil
from itertools import product

import numpy as np
import pytest
import torch

import d2d_ext
from d2d_ext.bilevel import (
    MetaWeighter,
    Trainer,
    TrainConfig,
    hypergradient_step,
    load_checkpoint,
    sample_statistics,
    selection_score,
    surrogate,
    evaluate_checkpoint,
    validation_loss,
)
from conftest import fit_until
from d2d_ext.cli import main
from d2d_ext.data import IRDataset
from d2d_ext.files import DataError
from d2d_ext.reference import soft_iou_of_probabilities, soft_iou_reference
from d2d_ext.soft_iou import weighted_soft_iou
from d2d_ext.synthetic import write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "SYN", n_images=16, seed=0, height=64, width=64)


def tiny(**kw):
    base = dict(epochs=3, warmup_epochs=1, theta_every=1, batch_size=4, crop_size=32, seed=0, meta_every=1)
    base.update(kw)
    return TrainConfig(**base)


def _blobs(rng, n, size=32):
    images, masks = [], []
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n):
        img = rng.normal(0, 0.1, (size, size)).astype(np.float32)
        cy, cx = rng.integers(6, size - 6, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(2, 4) ** 2
        img[disc] += 1.0
        images.append(img)
        masks.append(disc.astype(np.float32))
    return torch.tensor(np.stack(images))[:, None], torch.tensor(np.stack(masks))[:, None]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["exact", "first-order"])
def test_learned_weights_rank_clean_samples_above_corrupted_ones(form):
    """A quarter of the training labels are moved off their targets: the meta-classifier, trained
    on the one-step hypergradient of a clean validation set, must weight them down (AUC)."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    X, Y = _blobs(rng, 48)
    corrupted = np.arange(48) % 4 == 0
    for i in np.flatnonzero(corrupted):
        Y[i, 0] = torch.roll(Y[i, 0], shifts=(int(rng.integers(8, 16)), int(rng.integers(8, 16))), dims=(0, 1))
    VX, VY = _blobs(rng, 12)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3, padding=1))
    meta = MetaWeighter()
    meta_opt = torch.optim.Adam(meta.parameters(), lr=1e-2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ema = torch.zeros(48)
    for it in range(90):
        idx = torch.from_numpy(rng.choice(48, 12, replace=False))
        x, y = X[idx], Y[idx]
        if it >= 45:
            hypergradient_step(model, meta, meta_opt, x, y, ema[idx], VX, VY, inner_lr=1e-3, form=form)
        out = model(x)
        alpha = torch.ones(12) if it < 45 else meta(sample_statistics(out.detach(), y, ema[idx])).detach()
        opt.zero_grad()
        weighted_soft_iou(out, y, alpha).backward()
        opt.step()
        with torch.no_grad():
            ema[idx] = 0.9 * ema[idx] + 0.1 * d2d_ext.soft_iou(out.detach(), y)
    with torch.no_grad():
        alpha = meta(sample_statistics(model(X), Y, ema)).numpy()
    auc = np.mean([(c > b) + 0.5 * (c == b) for c, b in product(alpha[~corrupted], alpha[corrupted])])
    assert auc >= 0.9, f"AUC {auc:.3f}"
    assert alpha[corrupted].mean() < 0.5 * alpha[~corrupted].mean()


def test_first_order_hypergradient_matches_the_exact_one():
    """The gradient-alignment form differs from the exact one-step hypergradient only by grad L_val
    taken at w instead of w - inner_lr * (...): with a small inner_lr the meta-classifier's
    gradients agree; both leave the detector (weights and BatchNorm buffers) untouched."""
    torch.manual_seed(0)
    model = d2d_ext.models.build_model("unet").double()
    meta = MetaWeighter().double()
    x, vx = torch.randn(2, 6, 1, 32, 32, dtype=torch.float64)
    y, vy = (torch.rand(2, 6, 1, 32, 32) > 0.9).double()
    ema = torch.rand(6, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads, val = {}, {}
    for form in ("exact", "first-order"):
        frozen = torch.optim.SGD(meta.parameters(), lr=0.0)  # keeps the gradient, moves nothing
        val[form] = hypergradient_step(model, meta, frozen, x, y, ema, vx, vy, 1e-3, form=form)
        grads[form] = torch.cat([p.grad.flatten() for p in meta.parameters()])
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
    a, b = grads["exact"], grads["first-order"]
    assert a.norm() > 0
    assert (a - b).norm() < 1e-3 * a.norm()
    # the exact form reports L_val after the look-ahead, the first-order one before it
    assert val["exact"] != val["first-order"] and abs(val["exact"] - val["first-order"]) < 1e-3
    with pytest.raises(ValueError, match="hypergradient form must be one of"):
        hypergradient_step(model, meta, frozen, x, y, ema, vx, vy, 1e-3, form="second-order")


def test_theta_step_lowers_the_surrogate_objective_and_labels_are_regenerated(dataset, tmp_path):
    trainer = Trainer(dataset, tmp_path / "run", tiny(epochs=2), progress=False)
    trainer.epoch = 1  # past warm-up
    batch = trainer.val_set.targets
    theta0 = trainer.annotator.params.values()
    from d2d_ext.annotate import crop_maps
    from d2d_ext.bilevel import predict

    pred = crop_maps([predict(trainer.model, im) for im in trainer.val_set.images], batch)

    def objective():
        with torch.no_grad():
            theta = trainer.annotator.params()
            from d2d_ext.annotate import soft_labels

            target = soft_labels(batch, theta)
            m = surrogate(pred, batch, theta, trainer.cfg.surrogate_steps)
            return float(soft_iou_of_probabilities(m, target.to(m.dtype)).mean() + soft_iou_of_probabilities(m, pred.to(m.dtype)).mean())

    for g in trainer.theta_opt.param_groups:
        g["lr"] = 1e-3  # a small step: the objective must go down
    before = objective()
    trainer._theta_step()
    assert objective() < before
    assert trainer.annotator.params.values() != theta0
    labels_before = [lab.copy() for lab in trainer.train_set.labels]
    seconds = trainer.refresh_labels()
    assert seconds > 0 and len(trainer.train_set.labels) == len(labels_before)
    assert all(lab is not old for lab, old in zip(trainer.train_set.labels, labels_before))


def _strip(records):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in records]


@pytest.mark.parametrize("weight_ema", [0.0, 0.5])
def test_resumed_run_matches_an_uninterrupted_one(dataset, tmp_path, weight_ema):
    torch.set_num_threads(1)
    full = Trainer(dataset, tmp_path / "a", tiny(weight_ema=weight_ema), progress=False)
    records_a = full.fit()

    fit_until(Trainer(dataset, tmp_path / "b", tiny(weight_ema=weight_ema), progress=False), 2)
    resumed = Trainer(dataset, tmp_path / "b", tiny(weight_ema=weight_ema), progress=False)
    resumed.load_state(load_checkpoint(tmp_path / "b" / "last.pt"))
    assert resumed.epoch == 2
    records_b = resumed.fit()
    assert _strip(records_a) == _strip(records_b)
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    if weight_ema:  # the average resumes too
        assert int(resumed.averaged.n_averaged) == int(full.averaged.n_averaged) > 0
        for (k, a), (_, b) in zip(full.detector.state_dict().items(), resumed.detector.state_dict().items()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2]


@pytest.mark.parametrize("mode", ["full", "naive", "fixed", "bilevel"])
def test_modes_train_and_log(dataset, tmp_path, mode):
    trainer = Trainer(dataset, tmp_path / mode, tiny(mode=mode, epochs=2), progress=False)
    if mode == "naive":  # the label is the point pixels
        assert all(lab.sum() == len(p) for lab, p in zip(trainer.train_set.labels, trainer.train_set.points))
    if mode == "full":
        assert all((lab > 0.5).sum() == g.sum() for lab, g in zip(trainer.train_set.labels, trainer.train_set.gts))
    records = trainer.fit()
    keys = {"epoch", "train_loss", "val_loss", "theta", "alpha_mean", "alpha_std", "label_update_seconds",
            "epoch_seconds", "val_iou", "val_niou", "val_pd", "val_fa"}
    assert keys <= set(records[-1])
    assert (tmp_path / mode / "last.pt").is_file() and (tmp_path / mode / "best.pt").is_file()
    rows = (tmp_path / mode / "alpha.csv").read_text().splitlines()
    assert rows[0] == "id,alpha,label_area,targets" and len(rows) == 1 + len(trainer.train_set.ids)
    if mode == "bilevel":
        assert records[-1]["label_update_seconds"] > 0
        assert records[-1]["theta"] != records[0]["theta"] or records[0]["label_update_seconds"] > 0
    else:
        assert all(r["label_update_seconds"] == 0 for r in records)
        assert records[-1]["alpha_std"] == 0


@pytest.mark.parametrize("mode", ["fixed", "bilevel", "naive"])
def test_point_modes_validate_on_pseudo_labels(dataset, tmp_path, mode):
    trainer = Trainer(dataset, tmp_path / "r", tiny(mode=mode, epochs=1), progress=False)
    for lab, img, pts in zip(trainer.val_set.labels, trainer.val_set.images, trainer.val_set.points):
        expected = trainer.annotator.annotate([img], [pts])[0]
        assert ((lab > 0.5) == expected).all()


def test_full_supervision_validates_on_masks(dataset, tmp_path):
    trainer = Trainer(dataset, tmp_path / "r", tiny(mode="full", epochs=1), progress=False)
    pseudo = trainer.annotator.annotate(trainer.val_set.images, trainer.val_set.points)
    assert any(((lab > 0.5) != p).any() for lab, p in zip(trainer.val_set.labels, pseudo))
    for lab, gt in zip(trainer.val_set.labels, trainer.val_set.gts):
        assert ((lab > 0.5) == gt).all()


def test_cli_train_test_select_and_resume_guard(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--dataset", str(dataset), "--epochs", "2", "--warmup-epochs", "1", "--theta-every", "1",
            "--batch-size", "4", "--crop-size", "32", "--out", str(run), "--quiet", "--threads", "1"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["epochs"] == 2
    assert (run / "plots" / "curves.png").stat().st_size > 1000
    assert (run / "plots" / "alpha_vs_size.png").stat().st_size > 1000
    assert main(args) == 2  # an existing run without --resume is refused
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # nothing left to do: finishes at once
    capsys.readouterr()
    assert main(["test", "--checkpoint", str(run / "best.pt"), "--dataset", str(dataset), "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"iou", "niou", "pd", "fa", "images", "targets"} <= set(result)
    assert main(["select", "--run", str(run), "--top", "0.3", "--out", str(tmp_path / "top.txt")]) == 0
    ids = (tmp_path / "top.txt").read_text().split()
    rows = [line.split(",") for line in (run / "alpha.csv").read_text().splitlines()[1:]]
    assert len(ids) == round(0.3 * len(rows))
    best = sorted(rows, key=lambda r: -float(r[1]))[:len(ids)]
    assert ids == [r[0] for r in best]


def test_train_takes_the_annotators_settings(dataset, tmp_path, capsys):
    """``train --settings`` / ``--set`` shape the pseudo-labels as ``annotate``'s do (a style
    ``calibrate`` fitted): the run's labels are that annotator's masks, the checkpoint keeps the
    settings, and a resume with other ones is refused, naming them."""
    from d2d_ext.annotate import Annotator, AnnotatorConfig

    config = AnnotatorConfig(mask_margin=1)
    trainer = Trainer(dataset, tmp_path / "t", tiny(epochs=1), config, progress=False)
    split = trainer.train_set
    want = Annotator(config).annotate(split.images, split.points)
    plain = Annotator().annotate(split.images, split.points)
    assert all(np.array_equal(label > 0, m) for label, m in zip(split.labels, want))
    assert sum(m.sum() for m in want) > sum(m.sum() for m in plain)

    run = tmp_path / "run"
    args = ["train", "--dataset", str(dataset), "--epochs", "1", "--batch-size", "4", "--crop-size", "32",
            "--out", str(run), "--quiet", "--threads", "1"]
    (tmp_path / "s.json").write_text(json.dumps({"settings": {"mask_margin": 2, "low_fraction": 0.25}}))
    style = ["--settings", str(tmp_path / "s.json"), "--set", "mask_margin=1"]  # --set wins
    assert main(args + style) == 0
    saved = load_checkpoint(run / "last.pt")["annotator_config"]
    assert saved["mask_margin"] == 1 and saved["low_fraction"] == 0.25
    capsys.readouterr()
    assert main(args + style + ["--resume"]) == 0
    assert main(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "other annotator settings" in err and "'mask_margin': (1, 0)" in err
    assert main(args[:-5] + ["--out", str(tmp_path / "bad"), "--set", "mask_margin=-1"]) == 2
    assert "mask_margin must be a whole number" in capsys.readouterr().err


def test_cli_passes_the_training_recipe_options(dataset, tmp_path, capsys):
    args = ["train", "--dataset", str(dataset), "--epochs", "1", "--batch-size", "4", "--crop-size", "32",
            "--quiet", "--threads", "1"]
    assert main(args + ["--out", str(tmp_path / "run"), "--weight-ema", "0.9", "--val-batch-size", "2",
                        "--select", "val-iou", "--meta-every", "8", "--theta-lr", "0.05"]) == 0
    config = load_checkpoint(tmp_path / "run" / "last.pt")["config"]
    assert config["weight_ema"] == 0.9 and config["val_batch_size"] == 2 and config["select"] == "val-iou"
    assert config["meta_every"] == 8 and config["theta_lr"] == 0.05
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["select"] == "val-iou" and out["best_epoch"] == 0
    assert main(args + ["--out", str(tmp_path / "bad"), "--weight-ema", "1"]) == 2
    assert "weight_ema must be in [0, 1)" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "bad"), "--meta-every", "0"]) == 2
    assert "meta_every must be >= 1, got 0" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "bad"), "--theta-lr", "-1"]) == 2
    assert "theta_lr must be >= 0" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "bad"), "--select", "val-pd"]) == 2
    assert "argument --select: invalid choice: 'val-pd'" in capsys.readouterr().err


def test_resume_refuses_a_changed_split(dataset, tmp_path):
    data = tmp_path / "SYN"
    shutil.copytree(dataset, data)
    run = tmp_path / "run"
    trainer = Trainer(data, run, tiny(epochs=2), progress=False)
    fit_until(trainer, 1)
    split = next((data / "img_idx").glob("train_*.txt"))
    ids = split.read_text().split()
    split.write_text("\n".join(ids[:-1]) + "\n")
    changed = Trainer(data, run, tiny(epochs=2), progress=False)
    n_then, n_now = len(trainer.train_set.ids), len(changed.train_set.ids)
    with pytest.raises(DataError, match=re.escape(f"--resume: the train split changed since the run started ({n_then} images then, {n_now} now")):
        changed.load_state(load_checkpoint(run / "last.pt"))


def test_checkpoints_are_loaded_safely(tmp_path):
    bad = tmp_path / "evil.pt"

    class Boom:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"format": "d2d_ext.train/1", "x": Boom()}, bad)
    with pytest.raises(DataError, match="cannot load checkpoint"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(DataError, match="not a d2d_ext training checkpoint"):
        load_checkpoint(other)
    with pytest.raises(DataError, match="not found"):
        evaluate_checkpoint(tmp_path / "missing.pt", tmp_path)


DDP_SCRIPT = """
import sys, torch
from d2d_ext.bilevel import Trainer, TrainConfig
cfg = TrainConfig(epochs=2, warmup_epochs=1, theta_every=1, batch_size=2, crop_size=32, meta_every=1,
                  weight_ema=0.9)
trainer = Trainer(sys.argv[1], sys.argv[2], cfg, progress=False)
trainer.fit()
state = {"model": trainer.model.state_dict(), "meta": trainer.meta.state_dict(),
         "theta": trainer.annotator.params.state_dict(), "averaged": trainer.detector.state_dict(),
         "world": trainer.world}
torch.save(state, f"{sys.argv[2]}/rank{trainer.rank}.pt")
"""


@pytest.mark.slow
def test_two_process_gloo_run_agrees_on_the_weights(dataset, tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(dataset), str(run)],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = [torch.load(run / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert states[0]["world"] == states[1]["world"] == 2
    for part in ("model", "meta", "theta", "averaged"):
        for key, value in states[0][part].items():
            torch.testing.assert_close(value, states[1][part][key], rtol=0, atol=0, msg=f"{part}.{key}")
    assert (run / "last.pt").is_file() and (run / "alpha.csv").is_file()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]


def test_pooled_validation_loss_counts_samples_by_their_pixels():
    # One crop with a large target predicted well, one with a one-pixel target missed.
    logits = torch.full((2, 1, 8, 8), -8.0, dtype=torch.float64)
    labels = torch.zeros_like(logits)
    labels[0, 0, :6, :6] = 1
    logits[0, 0, :6, :6] = 8.0
    labels[1, 0, 3, 3] = 1
    per_sample = validation_loss(logits, labels, "per-sample")
    pooled = validation_loss(logits, labels, "pooled")
    torch.testing.assert_close(per_sample, soft_iou_reference(logits, labels).mean())
    p = torch.sigmoid(logits)
    inter = (p * labels).sum()
    torch.testing.assert_close(pooled, 1 - (inter + 1) / (p.sum() + labels.sum() - inter + 1))
    assert pooled < 0.1 < per_sample  # the missed pixel is 1 of 37 target pixels, but 1 of 2 samples
    with pytest.raises(ValueError, match="kind must be one of"):
        validation_loss(logits, labels, "pixel")
    # both forms are twice differentiable (the hypergradient differentiates through a gradient)
    x = logits.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(validation_loss(x, labels, "pooled"), x, create_graph=True)
    assert g.requires_grad


@pytest.mark.parametrize("setting,bad,other", [("meta_loss", "mean", "pooled"),
                                               ("hypergradient", "approximate", "first-order")])
def test_meta_classifier_settings(dataset, tmp_path, setting, bad, other):
    with pytest.raises(ValueError, match=f"{setting} must be one of"):
        tiny(**{setting: bad}).validate()
    trainer = Trainer(dataset, tmp_path / other, tiny(epochs=2, **{setting: other}), progress=False)
    records = trainer.fit()
    assert all(np.isfinite(r["val_loss"]) for r in records) and records[-1]["alpha_std"] > 0


def test_a_run_from_before_a_setting_existed_resumes_with_its_default(dataset, tmp_path):
    run = tmp_path / "run"
    fit_until(Trainer(dataset, run, tiny(epochs=2), progress=False), 1)
    state = load_checkpoint(run / "last.pt")
    for added in ("meta_loss", "hypergradient", "select"):  # as written by an older version
        del state["config"][added]
    resumed = Trainer(dataset, run, tiny(epochs=2), progress=False)
    resumed.load_state(state)
    assert resumed.epoch == 1
    with pytest.raises(DataError, match=re.escape("'meta_loss': ('per-sample', 'pooled')")):
        Trainer(dataset, run, tiny(epochs=2, meta_loss="pooled"), progress=False).load_state(state)


def test_every_number_of_a_training_run_has_a_span_checked_before_the_run():
    """Every number setting of :class:`TrainConfig` carries a span, holds its default, and is
    refused outside it naming the setting: a crop of 0 pixels or a negative seed failed deep inside
    the run, a negative learning rate or weight decay was torch's error, a negative loss weight was
    taken."""
    numbers = [f for f in dataclasses.fields(TrainConfig)
               if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)]
    assert numbers and all("span" in f.metadata for f in numbers)
    TrainConfig().validate()
    for f in numbers:
        span = f.metadata["span"]
        past = [span.low - (1 if span.whole else 0.01)]
        if span.high is not None:
            past.append(span.high if span.open in ("high", "both") else span.high + 0.01)
        for value in past + [float("nan")]:
            with pytest.raises(ValueError, match=f"^{f.name} must be"):
                TrainConfig(**{f.name: value}).validate()


def test_weight_ema_averages_every_step_and_is_what_validates_and_tests(dataset, tmp_path):
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="weight_ema must be in"):
            tiny(weight_ema=bad).validate()
    decay = 0.6
    trainer = Trainer(dataset, tmp_path / "r", tiny(mode="fixed", epochs=2, batch_size=2, weight_ema=decay), progress=False)
    live_after_steps = []
    step = trainer.opt.step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        live_after_steps.append([p.detach().clone() for p in trainer.model.parameters()])
        return out

    trainer.opt.step = recording_step
    records = trainer.fit()
    # the running average of the live weights after each step: the first copied, then lerp
    expected = live_after_steps[0]
    for params in live_after_steps[1:]:
        expected = [e + (1 - decay) * (p - e) for e, p in zip(expected, params)]
    assert int(trainer.averaged.n_averaged) == len(live_after_steps) > 2
    for e, a in zip(expected, trainer.detector.parameters()):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(trainer.detector.parameters(), trainer.model.parameters()))
    # validation reads the average ...
    assert records[-1]["val_loss"] == trainer.validate()["val_loss"]
    live = trainer.averaged
    trainer.averaged = None
    assert trainer.validate()["val_loss"] != records[-1]["val_loss"]
    trainer.averaged = live
    # ... and so does `test`: the checkpoint keeps both, the live weights for --resume
    state = load_checkpoint(tmp_path / "r" / "last.pt")
    assert state["n_averaged"] == len(live_after_steps)
    for k, v in trainer.detector.state_dict().items():
        torch.testing.assert_close(state["averaged_model"][k], v, rtol=0, atol=0, msg=k)
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(state["model"][k], v, rtol=0, atol=0, msg=k)
    from d2d_ext.metrics import ISTDMetrics
    from d2d_ext.bilevel import predict

    metrics = ISTDMetrics()
    for i in trainer.ds.ids("test"):
        metrics.update(predict(trainer.detector, trainer.ds.load_image(i)), trainer.ds.load_mask(i))
    assert evaluate_checkpoint(tmp_path / "r" / "last.pt", dataset, "test") == metrics.compute()


def test_val_batch_size_sets_the_validation_crops_of_each_iteration(dataset, tmp_path):
    with pytest.raises(ValueError, match="val_batch_size must be >= 0, got -1"):
        tiny(val_batch_size=-1).validate()
    trainer = Trainer(dataset, tmp_path / "r", tiny(epochs=2, val_batch_size=2), progress=False)
    meta_batches, forward_batches = [], []
    meta_step, net = trainer._meta_step, trainer.net

    def recording_meta_step(x, y, idx, vx, vy):
        meta_batches.append((x.shape[0], vx.shape[0]))
        return meta_step(x, y, idx, vx, vy)

    def recording_net(inputs):
        forward_batches.append(inputs.shape[0])
        return net(inputs)

    trainer._meta_step, trainer.net = recording_meta_step, recording_net
    trainer.fit()
    assert meta_batches and all(m == (4, 2) for m in meta_batches)
    assert forward_batches and all(n == 4 + 2 for n in forward_batches)  # training and validation crops


def test_select_picks_best_pt_by_the_validation_loss_or_iou(dataset, tmp_path):
    with pytest.raises(ValueError, match="select must be one of"):
        tiny(select="test-iou").validate()
    # scripted validation results, so that the two criteria disagree (and an undefined IoU appears)
    losses, ious = [0.5, 0.4, 0.45, 0.3], [10.0, 30.0, float("nan"), 20.0]
    for select, best in (("val-loss", 3), ("val-iou", 1)):
        trainer = Trainer(dataset, tmp_path / select, tiny(mode="fixed", epochs=4, select=select), progress=False)
        trainer.validate = lambda probs=None, t=trainer: {"val_loss": losses[t.epoch - 1], "val_iou": ious[t.epoch - 1]}
        records = trainer.fit()
        assert [r["val_iou"] for r in records][:2] == ious[:2]
        state = load_checkpoint(tmp_path / select / "best.pt")
        assert state["epoch"] == best + 1  # the epochs done when it was written
        assert state["best_val"] == (losses[best] if select == "val-loss" else -ious[best])
    # a resumed run reads its records back from log.jsonl, where an undefined value is null
    assert selection_score({"val_loss": 0.2, "val_iou": None}, "val-iou") == math.inf
    assert selection_score({"val_loss": None, "val_iou": 5.0}, "val-loss") == math.inf
    assert selection_score({"val_loss": 0.2, "val_iou": 5.0}, "val-iou") == -5.0


def test_the_loss_average_is_saved_under_the_key_older_checkpoints_use(dataset, tmp_path):
    """The per-sample running loss average (a meta-classifier input) is checkpointed as "ema", the
    key checkpoints have always had, so that runs resume across versions."""
    run = tmp_path / "run"
    trainer = Trainer(dataset, run, tiny(epochs=2), progress=False)
    trainer.fit()
    state = load_checkpoint(run / "last.pt")
    assert state["format"] == "d2d_ext.train/1"
    assert torch.equal(state["ema"], trainer.loss_avg) and trainer.loss_avg.abs().sum() > 0
    resumed = Trainer(dataset, run, tiny(epochs=2), progress=False)
    resumed.load_state(state)
    assert torch.equal(resumed.loss_avg, trainer.loss_avg)
    # alpha.csv holds the meta-classifier's weights of the whole images: normalised to mean 1
    alpha = np.array([float(line.split(",")[1]) for line in (run / "alpha.csv").read_text().splitlines()[1:]])
    assert len(alpha) == len(trainer.train_set.ids) and alpha.std() > 0
    assert abs(alpha.mean() - 1) < 1e-5


def test_the_package_keeps_every_name_it_had():
    import d2d_ext.bilevel as B
    from d2d_ext.bilevel import checkpoint, config, labels, loop, reweight

    for name in B.__all__:
        assert getattr(B, name) is not None, name
    assert B.Trainer is loop.Trainer and B.TrainConfig is config.TrainConfig
    assert B.load_checkpoint is checkpoint.load_checkpoint and B.surrogate is labels.surrogate
    assert B.MetaWeighter is reweight.MetaWeighter and B.hypergradient_step is reweight.hypergradient_step


def test_bad_pixel_map_reaches_the_labels_the_detector_and_test(dataset, tmp_path):
    """``bad_pixels``: the trainer reads every image repaired (its labels and its detector's input
    come from the same repaired images), the run records the map, and ``test --bad-pixels``
    scores the detector on repaired images too."""
    from d2d_ext.bilevel import predict
    from d2d_ext.files import write_png_atomic
    from d2d_ext.metrics import ISTDMetrics
    from d2d_ext.sensor import repair

    bad = np.zeros((64, 64), bool)
    bad[5::11, 7::9] = True
    write_png_atomic(tmp_path / "bad.png", bad.astype(np.uint8) * 255)
    trainer = Trainer(dataset, tmp_path / "r", tiny(epochs=1, mode="fixed", bad_pixels=str(tmp_path / "bad.png")),
                      progress=False)
    raw = IRDataset(dataset)
    some = trainer.ds.ids("train")[0]
    assert np.array_equal(trainer.ds.load_image(some), repair(raw.load_image(some), bad))
    assert np.array_equal(trainer.train_set.images[0], repair(raw.load_image(trainer.train_set.ids[0]), bad))
    trainer.fit()
    state = load_checkpoint(tmp_path / "r" / "last.pt")
    assert state["config"]["bad_pixels"] == str(tmp_path / "bad.png")
    metrics = ISTDMetrics()
    for i in raw.ids("test"):
        metrics.update(predict(trainer.detector, repair(raw.load_image(i), bad)), raw.load_mask(i))
    assert evaluate_checkpoint(tmp_path / "r" / "last.pt", dataset, "test", bad_pixels=tmp_path / "bad.png") \
        == metrics.compute()
