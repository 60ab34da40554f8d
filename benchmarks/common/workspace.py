"""Where the datasets are: the workspace is the folder that holds this repository, and the
datasets live in its ``shared/data`` (``<workspace>/shared/data/SIRST-v1``, ...)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # benchmarks/common/workspace.py -> the repository root
WORKSPACE = REPO.parent
SHARED_DATA = WORKSPACE / "shared" / "data"
