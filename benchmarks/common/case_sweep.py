"""The command line of the scripts that sweep synthetic cases (one image per case and noise draw)."""

import argparse

import torch

from d2d_ext.annotate import Annotator, config_from_dict
from d2d_ext.cli import parse_settings


def sweep_args(doc: str, seeds: int, argv=None) -> tuple:
    """``(args, annotator)``: ``--seeds`` (noise draws per case, default ``seeds``), ``--set
    NAME=VALUE`` (AnnotatorConfig settings, repeated) and ``--out FILE.md`` parsed from ``argv``,
    the description the first line of ``doc``; torch on one thread, as the timings elsewhere."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=seeds, help="noise draws per case")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="an AnnotatorConfig setting")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    return args, Annotator(config_from_dict(parse_settings(args.set)))
