"""The package namespace: submodules as lazy attributes, the re-exported functions kept."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import d2d_ext

# Submodules that pull in SciPy / scikit-image / Pillow / matplotlib, or a lot of Python.
HEAVY = ["d2d_ext.metrics", "d2d_ext.models", "d2d_ext.annotate", "d2d_ext.data", "d2d_ext.synthetic",
         "d2d_ext.bilevel", "d2d_ext.baselines", "d2d_ext.calibrate", "d2d_ext.cli", "d2d_ext.plots",
         "d2d_ext.nn", "scipy", "skimage", "PIL", "matplotlib"]
LAZY = ["metrics", "models", "annotate", "data", "synthetic", "bilevel", "baselines", "calibrate", "cli",
        "plots", "progress", "reference", "nn"]


def _python(code: str, tmp_path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, outside the source folder."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_submodule_is_an_attribute_in_a_fresh_interpreter(tmp_path):
    proc = _python("import d2d_ext; print(d2d_ext.metrics.ISTDMetrics.__name__)", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ISTDMetrics"


def test_import_loads_no_heavy_submodule(tmp_path):
    code = ("import json, sys; import d2d_ext; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    # ... and reading one attribute loads that submodule (and what it needs), not the others
    code = ("import json, sys; import d2d_ext; d2d_ext.metrics; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["d2d_ext.metrics", "scipy"]


@pytest.mark.parametrize("name", LAZY)
def test_every_submodule_resolves_to_itself(name):
    if not (Path(d2d_ext.__file__).parent / f"{name}.py").is_file():
        pytest.skip(f"d2d_ext/{name}.py is not part of this tree yet")
    module = getattr(d2d_ext, name)
    assert module is sys.modules[f"d2d_ext.{name}"]
    assert name in dir(d2d_ext)


def test_reexported_functions_are_kept():
    for name in ("metrics", "models", "data"):
        getattr(d2d_ext, name)
    assert callable(d2d_ext.soft_iou) and d2d_ext.soft_iou.__name__ == "soft_iou"
    assert callable(d2d_ext.diffuse) and d2d_ext.diffuse.__name__ == "diffuse"
    assert d2d_ext.diffusion is sys.modules["d2d_ext.diffusion"]


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'metricz'"):
        d2d_ext.metricz
    assert not hasattr(d2d_ext, "no_such_module")
