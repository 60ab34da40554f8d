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
         "d2d_ext.nn", "d2d_ext.files", "d2d_ext.points", "d2d_ext.picture", "d2d_ext.windows", "d2d_ext.jobs", "scipy",
         "skimage", "PIL", "matplotlib"]
LAZY = ["metrics", "models", "annotate", "data", "synthetic", "bilevel", "baselines", "calibrate", "cli",
        "plots", "progress", "reference", "nn", "files", "points", "picture", "windows", "jobs"]


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
    here = Path(d2d_ext.__file__).parent
    assert (here / f"{name}.py").is_file() or (here / name / "__init__.py").is_file(), name
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


def _architecture_table() -> dict:
    """README's "Architecture" table: ``{module path: (allowed package modules, test files)}``."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`d2d_ext/"):
            continue
        names = lambda cell: {c.strip().strip("`") for c in cell.split(",") if c.strip()}
        rows[cells[0].strip("`")] = (names(cells[2]), names(cells[3]))
    return rows


def _package_imports(path: Path, package_dir: Path) -> set:
    """The top-level package modules (``annotate``, ``_C``, ...) that ``path`` imports, not counting
    imports made for type checkers only (``if TYPE_CHECKING:``) or within its own subpackage."""
    import ast

    rel = path.relative_to(package_dir.parent).with_suffix("").parts  # ("d2d_ext", "bilevel", "loop")
    own = rel[1] if len(rel) > 1 else ""
    if own == "__init__":
        own = ""
    pkg = rel[:-1] if rel[-1] != "__init__" else rel[:-1]
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and child.level:
                base = list(pkg[:len(pkg) - (child.level - 1)])
                targets = [base + child.module.split(".")] if child.module else [base + [a.name] for a in child.names]
                found.update(t[1] for t in targets if len(t) > 1)
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith("d2d_ext."):
                found.add(child.module.split(".")[1])
            elif isinstance(child, ast.Import):
                found.update(a.name.split(".")[1] for a in child.names if a.name.startswith("d2d_ext."))
            visit(child)

    visit(ast.parse(path.read_text()))
    return found - {own}


def test_readme_architecture_is_true():
    """Every module of the package has a row in README's "Architecture" table, imports only the
    package modules its row allows, and its tests exist."""
    here = Path(d2d_ext.__file__).resolve().parent
    table = _architecture_table()
    assert len(table) >= 20, "README's Architecture table was not found or lost its rows"
    for path in sorted(here.rglob("*.py")):
        rel = path.relative_to(here.parent).as_posix()
        row = rel if rel in table else f"{path.parent.relative_to(here.parent).as_posix()}/"
        assert row in table, f"{rel} has no row in README's Architecture table"
        allowed, tests = table[row]
        extra = _package_imports(path, here) - allowed
        assert not extra, f"{rel} imports {sorted(extra)}, which README's Architecture table does not allow"
        for t in tests:
            assert (Path(__file__).parent / t).is_file(), f"README's Architecture row {row} names a missing test {t}"
    for row in table:
        assert (here.parent / row).exists(), f"README's Architecture table lists {row}, which does not exist"


def test_source_distribution_holds_every_included_file(tmp_path):
    # A build from the sdist compiles the .cpp / .cu files setup.py lists; every file they (and the
    # headers) include by a quoted path must travel with them.
    import re
    import tarfile

    import shutil

    root = Path(__file__).resolve().parents[1]
    if not (root / "setup.py").is_file():
        pytest.skip("needs the source tree (setup.py)")
    # from a copy without build products: setuptools also lists the files of an existing
    # *.egg-info/SOURCES.txt, which an earlier build may have left with more in it
    tree = tmp_path / "tree"
    skip = shutil.ignore_patterns("*.egg-info", "__pycache__", "*.so", "build")
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "requirements.txt", "csrc", "d2d_ext"):
        src = root / name
        if src.is_dir():
            shutil.copytree(src, tree / name, ignore=skip)
        elif src.is_file():
            tree.mkdir(exist_ok=True)
            shutil.copy2(src, tree / name)
    proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=tree,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {Path(*Path(n).parts[1:]).as_posix() for n in tar.getnames()}
    sources = [p for p in (root / "csrc").rglob("*") if p.suffix in (".cpp", ".cu", ".h", ".cuh")]
    assert sources
    missing = []
    for src in sources:
        rel = src.relative_to(root).as_posix()
        if src.suffix in (".cpp", ".cu") and rel not in names:
            missing.append(rel)
        for inc in re.findall(r'^\s*#\s*include\s+"([^"]+)"', src.read_text(), flags=re.M):
            target = (src.parent / inc).resolve()
            if target.is_file() and target.relative_to(root).as_posix() not in names:
                missing.append(f"{target.relative_to(root).as_posix()} (included by {rel})")
    assert not missing, f"not in the source distribution: {missing}"
