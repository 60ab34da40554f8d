"""The cost of a bi-level iteration by part, and of the two hypergradient forms, side by side.

    python benchmarks/training/meta_step_cost.py [--threads 1] [--crop 128] [--batch 8]
        [--repeats 7]

The small U-Net on random crops: a plain training step (``batch`` crops), the bi-level inner step
(training and validation crops in one forward pass), and the meta-classifier's step in its exact
(double backward through the look-ahead) and first-order (gradient alignment, one forward-mode
pass) forms; each timed in turn, ``repeats`` rounds, medians. Ends with the cost of a bi-level
iteration (meta step every 4 iterations, as in training) in plain steps.
"""

import argparse
import time

import torch

from d2d_ext import soft_iou
from d2d_ext.bilevel import HYPERGRADIENTS, TrainConfig, MetaWeighter, hypergradient_step
from d2d_ext.models import build_model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = TrainConfig()
    model, meta = build_model("unet"), MetaWeighter()
    meta_opt = torch.optim.Adam(meta.parameters(), cfg.meta_lr)
    shape = (2, args.batch, 1, args.crop, args.crop)
    x, vx = torch.randn(shape)
    y, vy = (torch.rand(shape) > 0.97).float()
    ema = torch.rand(args.batch)

    def plain_step():
        loss = soft_iou(model(x), y).mean()
        model.zero_grad()
        loss.backward()

    def inner_step():
        out = model(torch.cat([x, vx]))
        loss = soft_iou(out[: args.batch], y).mean() + cfg.beta * soft_iou(out[args.batch:], vy).mean()
        model.zero_grad()
        loss.backward()

    parts = {"plain step": plain_step, "bi-level inner step (training + validation crops)": inner_step}
    for form in HYPERGRADIENTS:
        parts[f"meta step, {form}"] = (lambda f=form: hypergradient_step(
            model, meta, meta_opt, x, y, ema, vx, vy, cfg.inner_lr, form=f))
    times = {name: [] for name in parts}
    for fn in parts.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in parts.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    print(f"U-Net, {args.batch} crops of {args.crop}x{args.crop}, torch threads {args.threads}, "
          f"medians of {args.repeats}\n\n| part | seconds |\n|---|---|")
    for name, sec in med.items():
        print(f"| {name} | {sec:.3f} |")
    print()
    plain = med["plain step"]
    for form in HYPERGRADIENTS:
        it = med["bi-level inner step (training + validation crops)"] + med[f"meta step, {form}"] / cfg.meta_every
        print(f"- bi-level iteration, {form} meta step every {cfg.meta_every}: {it:.3f} s = {it / plain:.2f} plain steps")


if __name__ == "__main__":
    main()
