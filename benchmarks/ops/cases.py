"""Benchmark inputs shared by the pytest-benchmark files and the report."""

import time

import torch

# name -> (N, H, W): the annotator's many small crops, the trainer's full-size images, and whole
# large frames (one sample: no parallelism over samples to lean on).
DIFFUSE_CASES = {"crops-1024x32x32": (1024, 32, 32), "images-16x256x256": (16, 256, 256),
                 "image-1x1024x1024": (1, 1024, 1024), "image-1x4096x4096": (1, 4096, 4096)}
# Autograd through the references keeps every step's state: 64 states of a 4096x4096 frame and
# its flows would take tens of GB, so the forward+backward leaves that case out.
DIFFUSE_BACKWARD_CASES = [case for case in DIFFUSE_CASES if case != "image-1x4096x4096"]
# Cases whose plain-torch reference takes seconds per call on a CPU: a few fixed rounds.
HEAVY_CASES = {"image-1x1024x1024", "image-1x4096x4096"}
DIFFUSE_STEPS = 64
DIFFUSE_TAU = 1.0
SOFT_IOU_SHAPE = (16, 1, 256, 256)
# GPU only: inputs of 256 MiB each, past an H100's 50 MB L2 cache, so that DRAM bounds the op
SOFT_IOU_GPU_SHAPE = (64, 1, 1024, 1024)


def soft_iou_cases():
    """``(device, shape)`` pairs: the training images' shape on every device, the large one on the GPU."""
    cases = [(d, SOFT_IOU_SHAPE) for d in devices()]
    return cases + ([("cuda", SOFT_IOU_GPU_SHAPE)] if "cuda" in devices() else [])


def devices():
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def diffuse_inputs(case, device, dtype=torch.float32, seed=0):
    """u0 (N, H, W) and rates (N, 4, H, W) with tau * sum_d rates <= 1 (positivity bound)."""
    N, H, W = DIFFUSE_CASES[case]
    g = torch.Generator().manual_seed(seed)
    u0 = torch.rand(N, H, W, generator=g, dtype=dtype)
    rates = torch.rand(N, 4, H, W, generator=g, dtype=dtype) * (0.25 / DIFFUSE_TAU)
    return u0.to(device), rates.to(device)


def soft_iou_inputs(device, shape=SOFT_IOU_SHAPE, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g, dtype=dtype) * 3
    target = (torch.rand(*shape, generator=g, dtype=dtype) > 0.9).to(dtype)
    return logits.to(device), target.to(device)


def measure(benchmark, run, heavy=False):
    """``benchmark(run)``, with the first call timed apart (``extra_info["first_call_s"]``: where
    ``torch.compile`` builds its kernels); ``heavy`` cases get three fixed rounds."""
    start = time.perf_counter()
    run()
    benchmark.extra_info["first_call_s"] = time.perf_counter() - start
    if heavy:
        return benchmark.pedantic(run, rounds=3, iterations=1)
    return benchmark(run)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()
