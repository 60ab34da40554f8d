"""Builds the library's CUDA sources, unchanged, for the CPU emulation of the CUDA execution model
(``csrc/emu/cuda_emu.h``) and loads them as an op library of its own namespace, on CPU tensors.

    ops = build("d2d_emu", tmp_dir)          # torch.ops.d2d_emu
    ops.configure(smem_optin, sms, schedule, seed)
    ops.diffuse(u0, rates, tau, steps)       # the CUDA kernels, run by the emulator

``build(..., csrc=copy)`` builds a copy of ``csrc/`` instead (the tests break a copy on purpose).
The emulated build lowers two limits so that small inputs reach the paths large ones take on a
GPU: the grid's y/z limit (``GRID_YZ_LIMIT`` samples per launch) and the state budget of the
checkpointed backward (``STATE_BUDGET_BYTES``).
"""

from pathlib import Path

import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CUDA_SOURCES = ("cuda/diffusion_cuda.cu", "cuda/soft_iou_cuda.cu")
# kernels that test the emulator itself (selftest_* ops)
SELFTEST = Path(__file__).resolve().parent / "emulator_selftest.cu"
GRID_YZ_LIMIT = 3
STATE_BUDGET_BYTES = 1 << 16
# configure()'s schedules: the order in which a block's threads run between barriers (and the
# blocks of a grid run)
FORWARD, REVERSE, RANDOM = 0, 1, 2
H100_SMEM_OPTIN, H100_SMS = 232448, 132


def build(namespace: str, build_dir: Path, csrc: Path = CSRC):
    """``torch.ops.<namespace>``: ``csrc``'s CUDA kernels compiled by the host compiler under the
    emulator, registered on CPU tensors."""
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / f"{namespace}.cpp"
    lines = ['#include "emu/cuda_emu.h"']
    lines += [f'#include "{Path(csrc) / name}"' for name in CUDA_SOURCES]
    lines += ['#include "emu/emulated_ops.h"', f'#include "{SELFTEST}"']
    source.write_text("\n".join(lines) + "\n")
    cpp_extension.load(
        name=namespace,
        sources=[str(source)],
        # -march=native -ffp-contract=fast: the host compiler merges products and sums into fused
        # multiply-adds wherever the source lets it, as nvcc does on a GPU by default, so that a
        # kernel whose bits depend on that merging differs from the CPU kernels here too
        extra_cflags=["-O2", "-std=c++20", "-march=native", "-ffp-contract=fast", "-Wno-unknown-pragmas",
                      "-fvisibility=hidden",
                      "-DD2D_CUDA_EMULATION", f"-DD2D_EMU_NAMESPACE={namespace}",
                      f"-DD2D_GRID_YZ_LIMIT={GRID_YZ_LIMIT}",
                      f"-DD2D_CUDA_STATE_BUDGET_BYTES={STATE_BUDGET_BYTES}"],
        # the shim folder first: its c10/cuda headers stand in for torch's
        extra_include_paths=[str(CSRC / "emu" / "shim"), str(CSRC)],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
    return getattr(torch.ops, namespace)
