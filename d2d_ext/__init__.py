"""d2d_ext: Diffuse to Detect for point-supervised infrared small-target detection.

Compiled ops (namespace ``torch.ops.d2d``) with autograd, and their Python wrappers:

- :func:`diffuse`: fused heat/drift transport on the pixel grid (the paper's Eq. 3).
- :func:`soft_iou`, :func:`weighted_soft_iou`: per-sample soft-IoU loss, sigmoid fused.
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
