"""Seconds per training epoch of bi-level variants against a plain (fixed-label) epoch, side by
side in one process on SIRST-v1 (or any dataset folder), one thread, after the warm-up.

    python benchmarks/training/bilevel_epoch_cost.py ../shared/data/SIRST-v1 [--epochs 2]

Each variant builds a fresh Trainer (seed 5, lr 1e-3, weight EMA 0.99, warm-up 0 so that the
meta steps run from the first epoch, theta never stepped) and times ``--epochs`` epochs; an epoch
includes its validation pass, as ``epoch_seconds`` in ``RUN/log.jsonl`` does. The run folders go
to a temporary directory.
"""
import argparse
import json
import tempfile

import torch

from d2d_ext.bilevel import Trainer, TrainConfig

VARIANTS = {
    "plain (fixed labels)": dict(mode="fixed"),
    "bi-level, default": dict(mode="bilevel"),
    "bi-level, 4 val crops, first-order, meta every 8": dict(mode="bilevel", val_batch_size=4,
                                                             hypergradient="first-order", meta_every=8),
    "bi-level, 2 val crops, first-order, meta every 8": dict(mode="bilevel", val_batch_size=2,
                                                             hypergradient="first-order", meta_every=8),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, kw) in enumerate(VARIANTS.items()):
            cfg = TrainConfig(epochs=40, warmup_epochs=0, theta_every=1000, seed=5, lr=1e-3, weight_ema=0.99, **kw)
            trainer = Trainer(args.dataset, f"{tmp}/{i}", cfg, progress=False, log=lambda *a: None)
            times = [trainer.train_epoch()["epoch_seconds"] for _ in range(args.epochs)]
            seconds[name] = sum(times) / len(times)
    plain = seconds["plain (fixed labels)"]
    print("| variant | seconds per epoch | plain epochs |\n|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.1f} | {s / plain:.2f} |")
    print(json.dumps({k: round(v, 2) for k, v in seconds.items()}))


if __name__ == "__main__":
    main()
