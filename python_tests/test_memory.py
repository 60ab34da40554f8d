"""Peak host memory of the checkpointed CPU backward of d2d.diffuse."""

import json
import subprocess
import sys
import textwrap

import pytest

# Runs in a fresh interpreter so that ru_maxrss (the peak resident set of the process) is not
# inflated by the rest of the test session. Prints the growth of the peak in bytes.
SCRIPT = textwrap.dedent(
    """
    import json, resource
    import torch
    import d2d_ext

    torch.set_num_threads(2)

    def peak_bytes():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    g = torch.Generator().manual_seed(0)
    N, H, W, steps, tau = 16, 256, 256, 1024, 1.0
    u0 = torch.rand((N, H, W), generator=g).requires_grad_(True)
    rates = (torch.rand((N, 4, H, W), generator=g) * (0.9 / 4)).requires_grad_(RATES_GRAD)
    grad_out = torch.randn((N, H, W), generator=g)
    out = d2d_ext.diffuse(u0, rates, tau, steps)  # warm-up forward; its output stays alive
    # the first backward of a process costs about 36 MiB of its own (autograd's set-up), whatever
    # it differentiates: paid here, on a plain product
    warm = torch.zeros((N, H, W)).requires_grad_(True)
    (warm * 2).backward(grad_out)
    del warm
    before = peak_bytes()
    out.backward(grad_out)
    after = peak_bytes()
    print(json.dumps({
        "growth": after - before,
        "finite": bool(torch.isfinite(u0.grad).all() and (not RATES_GRAD or torch.isfinite(rates.grad).all())),
        "grad_shapes": [list(u0.grad.shape)] + ([list(rates.grad.shape)] if RATES_GRAD else []),
        "mass_rel_error": float(
            ((out.double().sum((1, 2)) - u0.detach().double().sum((1, 2))) / u0.detach().double().sum((1, 2))).abs().max()
        ),
    }))
    """
)


def _measure(tmp_path, rates_grad: bool) -> dict:
    """SCRIPT's result in a fresh interpreter, with or without the rates' gradient. cwd away from
    the repository root, whose d2d_ext source folder (no _C unless built in place) would shadow
    the installed package under `python -c`."""
    proc = subprocess.run([sys.executable, "-c", f"RATES_GRAD = {rates_grad}\n" + SCRIPT], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_checkpointed_backward_peak_memory_cpu(tmp_path):
    # float32 (16, 256, 256), 1024 steps. Every state of the batch: 1024 * 4 MiB = 4 GiB. The CPU
    # kernel runs one sample per thread; keeping all of a sample's 1024 padded states would take
    # 1024 * 258^2 * 4 B = 273 MiB per thread (545 MiB for 2 threads). With checkpoints (segments
    # of 32: 14 + 32 + 32 planes) it is 21 MiB per thread, plus 20 MiB of gradients.
    result = _measure(tmp_path, rates_grad=True)
    growth_mib = result["growth"] / 2**20
    assert result["finite"]
    assert result["grad_shapes"] == [[16, 256, 256], [16, 4, 256, 256]]
    assert result["mass_rel_error"] < 1e-5  # the forward it differentiates conserves mass
    assert growth_mib < 1024, f"peak RSS grew by {growth_mib:.0f} MiB during the backward"
    # Tighter: below what keeping every state of the two samples in flight would cost.
    assert growth_mib < 256, f"peak RSS grew by {growth_mib:.0f} MiB during the backward"


def test_u0_only_backward_keeps_no_state_cpu(tmp_path):
    # The same problem with the rates fixed: the backward is the adjoint chain alone, ten planes
    # per thread (2.6 MiB) beside the gradient, where the checkpointed one needs 21 MiB per thread.
    result = _measure(tmp_path, rates_grad=False)
    assert result["finite"] and result["grad_shapes"] == [[16, 256, 256]]
    growth_mib = result["growth"] / 2**20
    assert growth_mib < 16, f"peak RSS grew by {growth_mib:.0f} MiB during the u0-only backward"
