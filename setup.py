"""Build d2d_ext and its compiled ops (d2d_ext._C) from csrc/.

CUDA kernels are compiled whenever nvcc and a CUDA build of torch are present, with or without a
GPU on the machine. Environment variables:

  D2D_FORCE_CUDA=1       build the CUDA kernels or fail (error if nvcc or CUDA torch is missing)
  D2D_FORCE_CPU=1        build the CPU kernels only
  TORCH_CUDA_ARCH_LIST   GPU architectures (default "8.0;9.0+PTX": A100, H100/H200, PTX for newer)
  D2D_CPU_ARCH           -march of the CPU kernels (default "native": this machine's vector units;
                         set e.g. "x86-64-v3" for a wheel that other machines will run, or "" for
                         the compiler's default)
  MAX_JOBS               parallel compile jobs (torch's ninja build)
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - the build needs torch first
    sys.exit(
        "d2d_ext needs torch at build time: pip install torch==2.14.1, then "
        "pip install --no-build-isolation ."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0+PTX"


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _find_nvcc():
    """CUDA_HOME/bin/nvcc, /usr/local/cuda/bin/nvcc or nvcc on PATH; sets CUDA_HOME for torch."""
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    on_path = shutil.which("nvcc")
    if on_path:
        candidates.append(os.path.realpath(on_path))
    for nvcc in candidates:
        if os.path.isfile(nvcc) and os.access(nvcc, os.X_OK):
            home = os.path.dirname(os.path.dirname(nvcc))
            os.environ["CUDA_HOME"] = home
            cpp_extension.CUDA_HOME = home
            return nvcc
    return None


def _wheel_cuda_includes():
    """Include folders of the nvidia-* wheels torch depends on (cuBLAS, cuSPARSE headers that the
    toolkit on some machines lacks but torch's CUDA headers include)."""
    found = []
    for base in sys.path:
        for pattern in ("nvidia/*/include", "nvidia/*/*/include"):
            for inc in sorted(glob.glob(os.path.join(base, pattern))):
                if os.path.isdir(inc) and inc not in found:
                    found.append(inc)
    return found


def _want_cuda():
    if _flag("D2D_FORCE_CPU"):
        return False
    nvcc = _find_nvcc()
    has_torch_cuda = torch.version.cuda is not None
    if _flag("D2D_FORCE_CUDA"):
        if nvcc is None or not has_torch_cuda:
            sys.exit(
                "D2D_FORCE_CUDA=1 but "
                + ("nvcc was not found (set CUDA_HOME)" if nvcc is None else "torch is a CPU build")
            )
        return True
    return nvcc is not None and has_torch_cuda


def _extension():
    with_cuda = _want_cuda()
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    # -fopenmp: at::parallel_for runs on OpenMP threads only where the caller is compiled with it
    # (the library resolves to the libgomp torch already loaded).
    # -fno-trapping-math: without AVX-512 masks, GCC vectorises a loop with a conditional float
    # op (the sigmoid's clamp and sign selects) only if it may compute both sides, which trapping
    # math forbids; without it the soft-IoU loops run scalar on AVX2 machines.
    # Nothing here reads the floating-point exception flags.
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fno-trapping-math"]
    cpu_arch = os.environ.get("D2D_CPU_ARCH", "native").strip()
    if cpu_arch:
        cxx.append("-march=" + cpu_arch)
    link = ["-fopenmp"]
    macros = [("Py_LIMITED_API", "0x030A0000")]
    if not with_cuda:
        print("d2d_ext: building the CPU kernels only", flush=True)
        return cpp_extension.CppExtension(
            "d2d_ext._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link, define_macros=macros,
            py_limited_api=True,
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    print(
        "d2d_ext: building CPU and CUDA kernels for TORCH_CUDA_ARCH_LIST="
        + os.environ["TORCH_CUDA_ARCH_LIST"],
        flush=True,
    )
    sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
    macros.append(("D2D_WITH_CUDA", None))
    return cpp_extension.CUDAExtension(
        "d2d_ext._C",
        sources,
        include_dirs=_wheel_cuda_includes(),
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        extra_link_args=link,
        define_macros=macros,
        py_limited_api=True,
    )


setup(
    name="d2d_ext",
    version="0.1.0",
    description="Diffuse to Detect: fused diffusion and soft-IoU ops for point-supervised "
    "infrared small-target detection",
    packages=find_packages(include=["d2d_ext", "d2d_ext.*"]),
    python_requires=">=3.10",
    # scipy (ndimage) and pillow (PNG I/O) are imported directly, not only through scikit-image
    install_requires=["torch==2.14.1", "numpy", "scipy", "pillow", "scikit-image", "matplotlib"],
    entry_points={"console_scripts": ["d2d = d2d_ext.cli:main"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
