"""d2d_ext: Diffuse to Detect for point-supervised infrared small-target detection.

Compiled ops (namespace ``torch.ops.d2d``) with autograd, and their Python wrappers:

- :func:`diffuse`: fused heat/drift transport on the pixel grid (the paper's Eq. 3).
- :func:`soft_iou`, :func:`weighted_soft_iou`: per-sample soft-IoU loss, sigmoid fused.

The submodules (``d2d_ext.metrics``, ``d2d_ext.models``, ``d2d_ext.data``, ...) are attributes
of the package too, imported on first use: ``import d2d_ext`` stays as cheap as the compiled ops
(no SciPy, scikit-image or Pillow until a submodule needs them). ``d2d_ext.soft_iou`` and
``d2d_ext.diffuse`` stay the functions (their modules: ``sys.modules["d2d_ext.soft_iou"]`` and
``d2d_ext.diffusion``).
"""

import torch  # noqa: F401  (loads libtorch before the extension)

try:
    from . import _C  # noqa: F401  (registers the d2d ops)
except ImportError as err:  # pragma: no cover - depends on how the package was installed
    import os as _os

    raise ImportError(
        "d2d_ext's compiled ops (d2d_ext._C) could not be loaded from "
        f"{_os.path.dirname(__file__)}: {err}. If this is the source folder, build it first: "
        "`pip install --no-build-isolation .` (then run from outside the source folder, e.g. "
        "`pytest python_tests`, not `python -m pytest`), or build in place with "
        "`pip install --no-build-isolation -e .`."
    ) from err
from .diffusion import diffuse
from .soft_iou import soft_iou, weighted_soft_iou

__version__ = "0.1.0"
WITH_CUDA = bool(_C.WITH_CUDA)

__all__ = ["diffuse", "soft_iou", "weighted_soft_iou", "WITH_CUDA", "__version__"]

# Submodules loaded when first read as attributes (PEP 562). Not in __all__: a star import would
# load them all. "soft_iou" is absent on purpose: that name is the function.
_LAZY_SUBMODULES = (
    "annotate", "baselines", "bilevel", "calibrate", "cli", "data", "files", "jobs", "metrics", "models", "nn",
    "picture", "plots", "points", "progress", "reference", "sensor", "stripes", "synthetic", "windows",
)


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":  # a dependency of the submodule is missing: say so
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r} "
                                 f"(this installation has no {__name__}/{name}.py)") from None
        globals()[name] = module  # later reads skip this function
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
