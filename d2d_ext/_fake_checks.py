"""The compiled kernels' dtype and device checks (``csrc/checks.h``), for the fake kernels: a
graph traced by ``torch.compile`` or run under ``FakeTensorMode`` fails where the eager call
would, with the same message."""

import torch


def check_float(op: str, name: str, t: torch.Tensor) -> None:
    torch._check(t.dtype in (torch.float32, torch.float64),
                 lambda: f"{op}: {name} must be float32 or float64, got {t.dtype}")


def check_same(op: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    torch._check(a.dtype == b.dtype,
                 lambda: f"{op}: {name_a} and {name_b} must have the same dtype, got {a.dtype} and {b.dtype}")
    torch._check(a.device == b.device,
                 lambda: f"{op}: {name_a} and {name_b} must be on the same device, got {a.device} and {b.device}")
