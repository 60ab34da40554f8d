"""The training run: :class:`Trainer` builds a run's parts and drives its epochs (the method is
described in :mod:`d2d_ext.bilevel`).

An epoch, top to bottom (:meth:`Trainer.train_epoch`): the iterations, each drawing crops
(:meth:`Trainer._next_batch`), stepping the meta-classifier where due (:meth:`Trainer._meta_step`)
and the detector (:meth:`Trainer._detector_step`); then, past the epoch's end, theta's step and
the labels' refresh where due, and the validation (:meth:`Trainer._finish_epoch`).
:meth:`Trainer.fit` runs epochs and writes the run's files after each.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..annotate import Annotator, AnnotatorConfig, DiffusionParams, prepare_targets
from ..data import IRDataset
from ..files import DataError, json_line, remove_stale_temps, write_bytes_atomic
from ..metrics import ISTDMetrics
from ..models import build_model, final_logits
from ..progress import Progress
from ..reference import soft_iou_of_probabilities
from ..soft_iou import soft_iou, weighted_soft_iou
from .batches import Split, pad16, predict, random_crops
from .checkpoint import FORMAT, LOSS_AVG_KEY, check_resumable, checkpoint_bytes, one_line, settings_record
from .config import TrainConfig
from .distributed import (
    all_reduce_grads,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    data_parallel,
    distributed_setup,
)
from .labels import split_labels, theta_step
from .reweight import MetaWeighter, hypergradient_step, sample_statistics
from .selection import selection_score

# The share of a sample's running loss average that each new loss of it replaces.
LOSS_AVG_RATE = 0.1


class Trainer:
    """Trains a detector on a dataset folder; writes ``RUN/`` (see :meth:`fit`).

    ``loss_avg``: ``(N,)`` every training sample's running average of its soft-IoU loss, one of
    the meta-classifier's inputs (:func:`~d2d_ext.bilevel.reweight.sample_statistics`).
    """

    def __init__(self, dataset, run_dir, config: TrainConfig, annotator_config: AnnotatorConfig | None = None,
                 progress: bool = True, log=print):
        config.validate()
        self.cfg = config
        self.ds = IRDataset(dataset, bad_pixels=config.bad_pixels or None)
        self.run = Path(run_dir)
        self.progress = progress
        self.log = log
        self.rank, self.world, self.device = distributed_setup()
        torch.manual_seed(config.seed)
        self.model = build_model(config.model).to(self.device)
        self.net = data_parallel(self.model, self.device, self.world)  # what the training step calls
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.averaged = None
        if config.weight_ema > 0:
            self.averaged = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.weight_ema),
                                          use_buffers=True)
        self.meta = MetaWeighter().to(self.device)
        self.meta_opt = torch.optim.Adam(self.meta.parameters(), lr=config.meta_lr)
        self.annotator = Annotator(annotator_config or AnnotatorConfig(), DiffusionParams())
        self.theta_opt = torch.optim.Adam(self.annotator.params.parameters(), lr=config.theta_lr)
        self.epoch = 0
        self.best_val = math.inf
        self._load_data()

    # -- data ------------------------------------------------------------------------------
    def _load_split(self, ids) -> Split:
        ds, cfg = self.ds, self.cfg
        images = [ds.load_image(i) for i in ids]
        points = [ds.points(i, cfg.points, seed=cfg.seed) for i in ids]
        gts = [ds.load_mask(i) if ds.has_mask(i) else None for i in ids]
        return Split(list(ids), images, points, gts)

    def _split_ids(self) -> tuple:
        """``(train_ids, val_ids)``: the validation images are an explicit split or a seeded share
        of the training split."""
        cfg = self.cfg
        ids = self.ds.ids(cfg.train_split)
        if cfg.val_split:
            val_ids = self.ds.ids(cfg.val_split)
            train_ids = [i for i in ids if i not in set(val_ids)]
        else:
            order = np.random.default_rng([cfg.seed, 7]).permutation(len(ids))
            n_val = max(1, int(round(cfg.val_fraction * len(ids))))
            val_ids = sorted(ids[j] for j in order[:n_val])
            train_ids = sorted(ids[j] for j in order[n_val:])
        if not train_ids:
            raise DataError(f"no training images left in split {cfg.train_split!r} after taking validation images")
        return train_ids, val_ids

    def _load_data(self) -> None:
        train_ids, val_ids = self._split_ids()
        self.train_set, self.val_set = self._load_split(train_ids), self._load_split(val_ids)
        for split in (self.train_set, self.val_set):
            split.targets = prepare_targets(split.images, split.points, self.annotator.config)
        self.loss_avg = torch.zeros(len(self.train_set.ids))
        self.refresh_labels()

    def refresh_labels(self) -> float:
        """(Re)make every training and validation label under the current theta; returns seconds."""
        t0 = time.perf_counter()
        for split, is_train in ((self.train_set, True), (self.val_set, False)):
            split.labels = split_labels(split, self.cfg.mode, self.annotator, is_train)
        return time.perf_counter() - t0

    @property
    def detector(self) -> torch.nn.Module:
        """The weights that validate, guide theta and are tested: the running average where
        ``weight_ema`` is on, else the live model."""
        return self.averaged.module if self.averaged is not None else self.model

    # -- schedule --------------------------------------------------------------------------
    def learning_rate(self) -> float:
        """The detector's learning rate for the current epoch."""
        if self.cfg.schedule == "constant" or self.cfg.epochs <= 1:
            return self.cfg.lr
        return 0.5 * self.cfg.lr * (1 + math.cos(math.pi * self.epoch / self.cfg.epochs))

    def _outer_active(self) -> bool:
        """Whether the bi-level steps (sample weights, theta) run this epoch: past the warm-up."""
        return self.cfg.mode == "bilevel" and self.epoch >= self.cfg.warmup_epochs

    def _meta_due(self, iteration: int) -> bool:
        """Whether the meta-classifier takes a hypergradient step before ``iteration``."""
        cfg = self.cfg
        return self._outer_active() and cfg.balance and not cfg.joint and iteration % cfg.meta_every == 0

    def _theta_due(self) -> bool:
        """Whether theta steps at the end of the epoch just finished (``self.epoch`` counts it)."""
        cfg = self.cfg
        return (cfg.mode == "bilevel" and cfg.online_labels and self.epoch > cfg.warmup_epochs
                and (self.epoch - cfg.warmup_epochs) % cfg.theta_every == 0)

    # -- the epoch -------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        """One epoch; returns its record (a line of ``log.jsonl``)."""
        cfg = self.cfg
        order = np.random.default_rng([cfg.seed, self.epoch]).permutation(len(self.train_set.ids))
        rng = np.random.default_rng([cfg.seed, self.epoch, self.rank])  # this rank's crops
        torch.manual_seed(cfg.seed * 100003 + self.epoch)
        for group in self.opt.param_groups:  # a function of the epoch: nothing to save for --resume
            group["lr"] = self.learning_rate()
        self.model.train()
        # every rank runs the same number of iterations on its own share of the batches
        n_batches = max(1, len(order) // (cfg.batch_size * self.world))
        t0 = time.perf_counter()
        train_loss, alphas = 0.0, []
        bar = Progress(n_batches, f"epoch {self.epoch + 1}/{cfg.epochs}") if self.progress and self.rank == 0 else None
        for b in range(n_batches):
            x, y, tidx, vx, vy = self._next_batch(order, b, rng)
            if self._meta_due(b):
                self._meta_step(x, y, tidx, vx, vy)
            loss, alpha = self._detector_step(x, y, tidx, vx, vy)
            train_loss += loss
            alphas.append(alpha)
            if bar:
                bar.update()
        if bar:
            bar.close()
        # BatchNorm statistics: each rank's last batch moved its own; take rank 0's (the average's too)
        broadcast_buffers(self.model, self.world)
        if self.averaged is not None:
            broadcast_buffers(self.averaged.module, self.world)
        alphas = torch.cat(alphas)
        record = {"epoch": self.epoch, "lr": self.learning_rate(), "train_loss": train_loss / n_batches,
                  "alpha_mean": float(alphas.mean()), "alpha_std": float(alphas.std()) if len(alphas) > 1 else 0.0,
                  "label_update_seconds": 0.0}
        self.epoch += 1
        record.update(self._finish_epoch())
        record["epoch_seconds"] = time.perf_counter() - t0
        return record

    def _next_batch(self, order: np.ndarray, b: int, rng: np.random.Generator) -> tuple:
        """Iteration ``b``'s ``(x, y, tidx, vx, vy)``: this rank's training crops ``x`` and labels
        ``y`` ``(B, 1, S, S)`` on the device, their samples' indices ``tidx`` ``(B,)``, and validation
        crops ``vx``, ``vy`` drawn at random."""
        cfg, tr, va = self.cfg, self.train_set, self.val_set
        start = (b * self.world + self.rank) * cfg.batch_size
        idx = order[start:start + cfg.batch_size]
        if len(idx) == 0:
            idx = order[:cfg.batch_size]
        x, y = (t.to(self.device) for t in random_crops(tr, idx, cfg.crop_size, rng))
        vidx = rng.integers(0, len(va.ids), size=min(cfg.val_batch_size or cfg.batch_size, len(va.ids)))
        vx, vy = (t.to(self.device) for t in random_crops(va, vidx, cfg.crop_size, rng))
        return x, y, torch.from_numpy(idx), vx, vy

    def _alpha(self, logits, labels, idx) -> torch.Tensor:
        """``(B,)`` sample weights of a training batch (ones while they are not learned)."""
        if not (self._outer_active() and self.cfg.balance):
            return torch.ones(labels.shape[0], device=labels.device)
        return self.meta(sample_statistics(logits, labels, self.loss_avg[idx].to(labels.device)))

    def _meta_step(self, x, y, idx, vx, vy) -> None:
        """The meta-classifier's hypergradient step on a training and a validation batch."""
        reduce = (lambda: all_reduce_grads(self.meta, self.world)) if self.world > 1 else None
        hypergradient_step(self.model, self.meta, self.meta_opt, x, y, self.loss_avg[idx].to(self.device), vx, vy,
                           self.cfg.inner_lr, before_step=reduce, meta_loss=self.cfg.meta_loss,
                           form=self.cfg.hypergradient)

    def _detector_step(self, x, y, tidx, vx, vy) -> tuple:
        """One AdamW step of the detector on ``L_tr(alpha) + beta * L_val``; in direct joint
        learning the meta-classifier steps on the same gradient. Returns the weighted training loss
        (float) and the batch's sample weights ``(B,)`` (CPU)."""
        cfg = self.cfg
        with_val = cfg.mode == "bilevel" and cfg.beta > 0
        # one forward pass for the training and validation crops (DDP counts one per backward)
        out = self.net(torch.cat([x, vx]) if with_val else x)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        B = x.shape[0]
        logits = outs[-1][:B]
        alpha = self._alpha(logits.detach(), y, tidx)
        joint = self._outer_active() and cfg.joint
        if not joint:
            alpha = alpha.detach()
        loss = weighted_soft_iou([o[:B] for o in outs], y, alpha)
        total = loss
        if with_val:
            total = total + cfg.beta * soft_iou(outs[-1][B:], vy).mean()
        self.opt.zero_grad()
        self.meta_opt.zero_grad()
        total.backward()
        self.opt.step()
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        if joint and cfg.balance:
            all_reduce_grads(self.meta, self.world)
            self.meta_opt.step()
        self._update_loss_avg(logits, y, tidx)
        return float(loss.detach()), alpha.detach().cpu()

    @torch.no_grad()
    def _update_loss_avg(self, logits, labels, idx) -> None:
        """Move the batch's samples' running loss averages towards their losses now (every rank's
        batch counts)."""
        delta = torch.zeros_like(self.loss_avg)
        delta[idx] = LOSS_AVG_RATE * (soft_iou(logits.detach(), labels).cpu() - self.loss_avg[idx])
        self.loss_avg += all_reduce_sum(delta, self.world)

    def _finish_epoch(self) -> dict:
        """Past the epoch's iterations: theta's step and the labels' refresh where due, and the
        validation; returns their part of the epoch's record."""
        # the theta step and the validation both need the detector on the validation images
        val_probs = [predict(self.detector, im) for im in self.val_set.images]
        record = {}
        if self._theta_due():
            record.update(self._theta_step(val_probs))
            record["label_update_seconds"] = self.refresh_labels()
        record["theta"] = self.annotator.params.values()
        record.update(self.validate(val_probs))
        return record

    def _theta_step(self, val_probs: list | None = None) -> dict:
        """One Adam step of theta on the surrogate objective over the validation targets
        (``val_probs``: the detector's ``(H, W)`` probabilities on them, if already computed)."""
        # theta follows the validation targets; in direct joint learning, the training ones
        split = self.train_set if self.cfg.joint or not len(self.val_set.targets) else self.val_set
        if len(split.targets) == 0:
            return {}
        if split is not self.val_set or val_probs is None:
            val_probs = [predict(self.detector, im) for im in split.images]
        loss = theta_step(self.annotator, self.theta_opt, split.targets, val_probs, self.cfg.surrogate_steps,
                          before_step=lambda: all_reduce_grads(self.annotator.params, self.world))
        return {"surrogate_loss": loss}

    @torch.no_grad()
    def validate(self, probs: list | None = None) -> dict:
        """Validation loss and metrics against the validation labels (pseudo-labels; the masks in
        ``full`` mode);
        ``probs``: the detector's ``(H, W)`` probabilities on the validation images, if computed."""
        va = self.val_set
        if probs is None:
            probs = [predict(self.detector, im) for im in va.images]
        metrics = ISTDMetrics()
        losses = []
        for prob, lab in zip(probs, va.labels):
            losses.append(float(soft_iou_of_probabilities(torch.from_numpy(prob)[None], torch.from_numpy(lab)[None])[0]))
            metrics.update(prob, lab > 0.5)
        m = metrics.compute()
        return {"val_loss": float(np.mean(losses)), "val_iou": m["iou"], "val_niou": m["niou"], "val_pd": m["pd"], "val_fa": m["fa"]}

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict:
        """The run's whole state (see :mod:`~d2d_ext.bilevel.checkpoint`); ``model`` holds the live
        weights (what training resumes from), ``averaged_model`` and ``n_averaged`` the running
        average where ``weight_ema`` is on."""
        averaged = {}
        if self.averaged is not None:
            averaged = {"averaged_model": self.averaged.module.state_dict(),
                        "n_averaged": int(self.averaged.n_averaged)}
        return {**averaged,
            "format": FORMAT, "epoch": self.epoch, "config": dataclasses.asdict(self.cfg),
            "annotator_config": settings_record(self.annotator.config),
            "model": self.model.state_dict(), "opt": self.opt.state_dict(),
            "meta": self.meta.state_dict(), "meta_opt": self.meta_opt.state_dict(),
            "theta": self.annotator.params.state_dict(), "theta_opt": self.theta_opt.state_dict(),
            LOSS_AVG_KEY: self.loss_avg.clone(), "best_val": self.best_val,
            "train_ids": list(self.train_set.ids), "val_ids": list(self.val_set.ids),
        }

    def load_state(self, state: dict) -> None:
        """Continue the run saved in ``state`` (:class:`DataError` if it is not this run's)."""
        check_resumable(state, self.cfg, {"train": self.train_set.ids, "val": self.val_set.ids}, self.annotator.config)
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            self.meta.load_state_dict(state["meta"])
            self.meta_opt.load_state_dict(state["meta_opt"])
            self.annotator.params.load_state_dict(state["theta"])
            self.theta_opt.load_state_dict(state["theta_opt"])
            self.loss_avg = state[LOSS_AVG_KEY].clone()
            if self.averaged is not None:
                self.averaged.module.load_state_dict(state["averaged_model"])
                self.averaged.n_averaged.fill_(int(state["n_averaged"]))
            self.best_val = float(state["best_val"])
            self.epoch = int(state["epoch"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise DataError(f"the checkpoint's weights do not fit this run (model {self.cfg.model!r}): "
                            f"{one_line(err)}") from err
        self.refresh_labels()

    # -- the run ---------------------------------------------------------------------------
    def fit(self) -> list:
        """Train to ``cfg.epochs``, writing ``log.jsonl``, ``last.pt``, ``best.pt``, ``alpha.csv``, plots."""
        self.run.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            remove_stale_temps(self.run)  # temporary files of a run killed mid-write
        log_path = self.run / "log.jsonl"
        records = []
        if log_path.is_file():  # keep the epochs done before (a resumed run)
            records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
            records = [r for r in records if r["epoch"] < self.epoch]
        while self.epoch < self.cfg.epochs:
            record = self.train_epoch()
            records.append(record)
            score = selection_score(record, self.cfg.select)
            improved = score < self.best_val
            if improved:
                self.best_val = score
            if self.rank == 0:  # every rank holds the same state; one writes it
                self._write_epoch(log_path, records, improved)
            if self.progress and self.rank == 0:
                self.log(f"epoch {record['epoch'] + 1}/{self.cfg.epochs}: train {record['train_loss']:.4f} "
                         f"val {record['val_loss']:.4f} val IoU {record['val_iou']:.2f} "
                         f"({record['epoch_seconds']:.1f} s)")
        if self.rank == 0:
            self.write_alpha()
        barrier(self.world)
        return records

    def _write_epoch(self, log_path: Path, records: list, improved: bool) -> None:
        """An epoch's files, each atomically: ``log.jsonl`` with every record, ``best.pt`` where the
        epoch ``improved``, ``last.pt``."""
        # the log first: a crash after it leaves last.pt an epoch behind, and --resume redoes that
        # epoch and its record; last.pt first would lose the record
        write_bytes_atomic(log_path, "".join(json_line(r) + "\n" for r in records).encode())
        state = checkpoint_bytes(self.state())
        if improved:
            write_bytes_atomic(self.run / "best.pt", state)
        write_bytes_atomic(self.run / "last.pt", state)

    @torch.no_grad()
    def sample_weights(self) -> np.ndarray:
        """``(N,)`` every training sample's learned weight, from its statistics on its whole image
        (ones where the weights are not learned)."""
        tr = self.train_set
        if not (self.cfg.balance and self.cfg.mode == "bilevel"):
            return np.ones(len(tr.ids))
        stats = []
        self.model.eval()
        for k, (img, lab) in enumerate(zip(tr.images, tr.labels)):
            x = pad16(img).to(self.device)
            y = torch.from_numpy(np.pad(lab, ((0, x.shape[2] - lab.shape[0]), (0, x.shape[3] - lab.shape[1]))))[None, None]
            logits = final_logits(self.model(x))
            stats.append(sample_statistics(logits, y.to(self.device), self.loss_avg[k:k + 1].to(self.device)).cpu())
        self.model.train()
        return self.meta(torch.cat(stats).to(self.device)).cpu().numpy()

    def write_alpha(self) -> Path:
        """``RUN/alpha.csv``: every training sample's learned weight (on its whole image) and the
        area of its pseudo-label."""
        tr = self.train_set
        rows = ["id,alpha,label_area,targets"] + [
            f"{i},{a:.6f},{int((lab > 0.5).sum())},{len(p)}"
            for i, a, lab, p in zip(tr.ids, self.sample_weights(), tr.labels, tr.points)]
        path = self.run / "alpha.csv"
        write_bytes_atomic(path, ("\n".join(rows) + "\n").encode())
        return path
