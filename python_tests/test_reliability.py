"""Reliability of the data, annotation and training commands.

Background-only images, bad input files (each a clear error naming the file, nothing
half-written), a 4096x4096 image with 500 targets (memory and time), ``kill -9`` in the middle of
``annotate`` and of ``train`` (resumed runs end byte / bit identical to uninterrupted ones), and
checkpoint safety (foreign or broken checkpoints, a full disk, a read-only run folder).

Commands run as real subprocesses (``python -m d2d_ext ...``) where a kill or the exit code and
stderr of the command line matter, in-process otherwise. The measured numbers of the large-image
test are printed (``pytest -s`` or ``-rP`` shows them).
"""

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import d2d_ext.bilevel.loop as B
import d2d_ext.files as D
from conftest import Killed, fit_until
from d2d_ext.bilevel import TrainConfig, Trainer, load_checkpoint
from d2d_ext.cli import main
from d2d_ext.jobs import MANIFEST
from d2d_ext.data import IRDataset
from d2d_ext.files import read_gray, write_png_atomic
from d2d_ext.points import label_targets, read_points_csv
from d2d_ext.models import build_model
from d2d_ext.synthetic import write_dataset

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")

# the tiny training setting shared by the in-process trainers and the command lines below
TRAIN_ARGS = ["--warmup-epochs", "1", "--theta-every", "1", "--batch-size", "2", "--crop-size", "32",
              "--threads", "1", "--quiet"]


def tiny(epochs: int, **kw) -> TrainConfig:
    """The TrainConfig that ``train --epochs N`` + TRAIN_ARGS builds."""
    return TrainConfig(epochs=epochs, warmup_epochs=1, theta_every=1, batch_size=2, crop_size=32, **kw)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cmd(args):
    return [sys.executable, "-m", "d2d_ext", *map(str, args)]


def _run(args, cwd, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _popen(args, cwd) -> subprocess.Popen:
    return subprocess.Popen(_cmd(args), cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _files(folder: Path) -> dict:
    """``{name: bytes}`` of every file in ``folder`` (hidden ones too)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _temps(folder: Path) -> list:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp")) if folder.exists() else []


def _pngs(folder: Path) -> list:
    return sorted(p.stem for p in folder.glob("*.png")) if folder.exists() else []


def _assert_complete_pngs(folder: Path) -> None:
    for p in folder.glob("*.png"):
        with Image.open(p) as img:
            img.load()  # a truncated file raises here
        read_gray(p)


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


class _Killer(threading.Thread):
    """:func:`_kill_when` in a thread, so that the test runs the uninterrupted reference meanwhile."""

    def __init__(self, proc, ready):
        super().__init__(daemon=True)
        self.proc, self.ready, self.killed, self.error = proc, ready, None, None

    def run(self):
        try:
            self.killed = _kill_when(self.proc, self.ready)
        except BaseException as err:  # noqa: BLE001  (re-raised by result())
            self.error = err

    def result(self) -> bool:
        self.join(240)
        if self.error is not None:
            raise self.error
        return self.killed


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 180.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled every 2 ms). False if the process
    ended by itself first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()  # reaps it and closes the pipes
            return True
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    raise AssertionError("the process never reached the point to kill it at")


# ------------------------------------------------------------------------------------------------
# 1. Background-only images
# ------------------------------------------------------------------------------------------------


def _make_background_only(root: Path, ids, seed: int = 0) -> None:
    """Turn ``ids`` into images without targets: smooth clutter, an empty ground-truth mask, an
    empty ``masks_centroid`` PNG and no rows in ``points_centroid.csv``."""
    rng = np.random.default_rng(seed)
    for i in ids:
        h, w = read_gray(root / "images" / f"{i}.png").shape
        low = ndimage.gaussian_filter(rng.normal(size=(h, w)), 6)
        low = (low - low.min()) / (np.ptp(low) + 1e-9)
        img = np.clip(50 + 70 * low + rng.normal(0, 2, (h, w)), 0, 255).astype(np.uint8)
        write_png_atomic(root / "images" / f"{i}.png", img)
        write_png_atomic(root / "masks" / f"{i}.png", np.zeros((h, w), np.uint8))
        write_png_atomic(root / "masks_centroid" / f"{i}.png", np.zeros((h, w), np.uint8))
    csv = root / "points_centroid.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0]] + [r for r in lines[1:] if r.split(",")[0] not in set(ids)]) + "\n")


def test_background_only_images_get_empty_masks_and_their_false_alarms_count(tmp_path, capsys):
    root = write_dataset(tmp_path / "SYN", n_images=6, seed=11, height=64, width=64)
    ids = IRDataset(root).ids("all")
    empty = [ids[1], ids[4]]
    _make_background_only(root, empty)
    ds = IRDataset(root)
    for i in ids:
        for source in ("centroid", "csv:points_centroid.csv"):
            assert (len(ds.points(i, source)) == 0) == (i in empty), (i, source)
    n_points = sum(len(ds.points(i, "centroid")) for i in ids)
    # batches of 4 mix both kinds; batches of 1 hold a background-only image alone (no target at all)
    for source, batch in (("centroid", 4), ("csv:points_centroid.csv", 1)):
        out = tmp_path / f"labels-{batch}"
        assert main(["annotate", "--dataset", str(root), "--points", source, "--out", str(out),
                     "--batch-images", str(batch), "--quiet"]) == 0
        report = _last_json(capsys.readouterr().out)
        assert report["images"] == 6 and report["targets"] == n_points
        assert _pngs(out) == ids
        for i in ids:
            mask = read_gray(out / f"{i}.png")
            assert mask.shape == (64, 64)
            assert (not mask.any()) if i in empty else mask.any(), (source, i)

    def evaluate():
        assert main(["evaluate", "--dataset", str(root), "--pred", str(pred), "--json", "--quiet"]) == 0
        return _last_json(capsys.readouterr().out)

    pred = tmp_path / "pred"
    pred.mkdir()
    for i in ids:
        shutil.copy(root / "masks" / f"{i}.png", pred / f"{i}.png")
    perfect = evaluate()
    n_targets = sum(label_targets(ds.load_mask(i))[1] for i in ids)
    assert perfect["targets"] == n_targets > 0 and perfect["images"] == 6
    assert perfect["pd"] == 100 and perfect["fa"] == 0
    blob = np.zeros((64, 64), np.uint8)
    blob[20:25, 30:35] = 255  # a 25-pixel false alarm on a background-only image
    write_png_atomic(pred / f"{empty[0]}.png", blob)
    with_blob = evaluate()
    assert with_blob["fa"] == pytest.approx(1e6 * 25 / (6 * 64 * 64), rel=1e-3)
    assert with_blob["pd"] == perfect["pd"] and with_blob["targets"] == perfect["targets"]
    assert with_blob["iou"] < perfect["iou"]


@pytest.mark.parametrize("share", ["half", "all"])
def test_training_accepts_samples_without_targets(tmp_path, share):
    root = write_dataset(tmp_path / "SYN", n_images=8, seed=12, height=64, width=64)
    ids = IRDataset(root).ids("all")
    empty = ids if share == "all" else ids[::2]
    _make_background_only(root, empty)
    (root / "img_idx" / "val_SYN.txt").write_text(f"{ids[0]}\n{ids[1]}\n")  # one of each kind
    cfg = tiny(2, train_split="all", val_split="val", meta_every=1)
    trainer = Trainer(root, tmp_path / "run", cfg, progress=False)
    for split in (trainer.train_set, trainer.val_set):
        assert any(len(p) == 0 for p in split.points)
    records = trainer.fit()
    assert [r["epoch"] for r in records] == [0, 1]
    for r in records:
        for key in ("train_loss", "val_loss", "alpha_mean", "alpha_std"):
            assert np.isfinite(r[key]), (key, r)
    assert records[1]["label_update_seconds"] > 0  # epoch 2 is past warm-up: theta step, new labels
    if share == "half":
        assert np.isfinite(records[1]["surrogate_loss"])
    for split in (trainer.train_set, trainer.val_set):
        for i, lab in zip(split.ids, split.labels):
            assert lab.any() != (i in empty), i
    rows = [r.split(",") for r in (tmp_path / "run" / "alpha.csv").read_text().splitlines()[1:]]
    assert sorted(r[0] for r in rows) == sorted(trainer.train_set.ids)
    for i, alpha, area, targets in rows:
        assert np.isfinite(float(alpha)) and (int(targets) == 0) == (i in empty)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# ------------------------------------------------------------------------------------------------
# 2. Bad input files: exit code 2, the file named, nothing half-written
# ------------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(5).integers(0, 256, 700, dtype=np.uint8).tobytes())


def _scramble_idat(path: Path) -> None:
    """A valid PNG signature, header and chunk CRCs around random compressed data."""
    b = bytearray(path.read_bytes())
    k = b.index(b"IDAT")
    n = struct.unpack(">I", b[k - 4:k])[0]
    b[k + 4:k + 4 + n] = np.random.default_rng(6).integers(0, 256, n, dtype=np.uint8).tobytes()
    b[k + 4 + n:k + 8 + n] = struct.pack(">I", zlib.crc32(bytes(b[k:k + 4 + n])) & 0xFFFFFFFF)
    path.write_bytes(bytes(b))


def _resize_mask(path: Path) -> None:
    m = np.zeros((48, 40), np.uint8)
    m[10:13, 10:13] = 255
    write_png_atomic(path, m)


# name: (what to break, relative path of the file to break or None, --split, --points, mid-run?,
# in a subprocess?). Mid-run cases break the 4th of 6 images with --batch-images 2: the first batch
# is written, the second stops; split-file cases stop before anything is written. Two extra cases
# run in this process (main()), to spare the time of starting Python.
BAD_CASES = {
    "truncated-image": (_truncate, "images/{bad}.png", "all", "centroid", True, True),
    "random-bytes-image": (_random_bytes, "images/{bad}.png", "all", "centroid", True, True),
    "mask-of-another-size": (_resize_mask, "masks/{bad}.png", "all", "gen-centroid", True, True),
    "id-without-image": (None, "img_idx/ghost_SYN.txt", "ghost", "centroid", False, True),
    "duplicate-ids": (None, "img_idx/dup_SYN.txt", "dup", "centroid", False, True),
    "missing-split-file": (None, "img_idx/nosuch_SYN.txt", "nosuch", "centroid", False, True),
    "corrupt-data-image": (_scramble_idat, "images/{bad}.png", "all", "centroid", True, False),
    "truncated-point-file": (_truncate, "masks_centroid/{bad}.png", "all", "centroid", True, False),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Every BAD_CASES annotate command, the subprocesses concurrently."""
    base = tmp_path_factory.mktemp("bad")
    clean = write_dataset(base / "clean" / "SYN", n_images=6, seed=3, height=64, width=64)
    ids = IRDataset(clean).ids("all")
    bad = ids[3]
    procs, in_process = {}, {}
    for name, (breaker, rel, split, points, _, as_subprocess) in BAD_CASES.items():
        root = base / name / "SYN"
        shutil.copytree(clean, root)
        target = root / rel.format(bad=bad)
        if name == "id-without-image":
            bad_id = "ghost_0007"
            target.write_text("".join(f"{i}\n" for i in ids[:2] + [bad_id] + ids[2:]))
        elif name == "duplicate-ids":
            bad_id = ids[1]
            target.write_text(f"{ids[0]}\n{ids[1]}\n{ids[2]}\n{ids[1]}\n")
        elif name == "missing-split-file":
            bad_id = None
        else:
            bad_id = bad
            breaker(target)
        out = base / name / "labels"
        args = ["annotate", "--dataset", root, "--split", split, "--points", points, "--out", out,
                "--batch-images", "2", "--quiet"]
        if as_subprocess:
            procs[name] = (_popen(args, base / name), target, out, bad_id)
        else:
            in_process[name] = ([str(a) for a in args], target, out, bad_id)
    results = {}
    for name, (args, target, out, bad_id) in in_process.items():
        with contextlib.redirect_stdout(io.StringIO()) as stdout, contextlib.redirect_stderr(io.StringIO()) as stderr:
            code = main(args)
        results[name] = (code, stdout.getvalue(), stderr.getvalue(), target, out, bad_id)
    for name, (proc, target, out, bad_id) in procs.items():
        stdout, stderr = proc.communicate(timeout=240)
        results[name] = (proc.returncode, stdout, stderr, target, out, bad_id)
    return ids, results


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_file_is_a_clear_error_and_nothing_is_half_written(bad_runs, case):
    ids, results = bad_runs
    code, _stdout, stderr, target, out, bad_id = results[case]
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(target) in last, last
    if bad_id is not None:
        assert bad_id in last
    assert _temps(out) == []
    _assert_complete_pngs(out)
    written = _pngs(out)
    assert bad_id not in written
    assert written == (ids[:2] if BAD_CASES[case][4] else [])


# ------------------------------------------------------------------------------------------------
# 3. A 4096x4096 image with 500 targets
# ------------------------------------------------------------------------------------------------

BIG_SCRIPT = """
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from d2d_ext.jobs import annotate_dataset

def hwm_kb():  # the peak RSS of this process image alone (Linux)
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None

before, hwm_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm_kb()
t0 = time.perf_counter()
report = annotate_dataset(sys.argv[1], "all", "csv:" + sys.argv[2], sys.argv[3], progress=False)
wall = time.perf_counter() - t0
after, hwm_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm_kb()
print(json.dumps({"maxrss_before_kb": before, "maxrss_after_kb": after, "hwm_before_kb": hwm_before,
                  "hwm_after_kb": hwm_after, "wall_seconds": wall, "report": report}))
"""

BIG_MAX_GROWTH_MB = 768  # measured 188 MB (Linux, one thread; the float32 image alone is 64 MB)
BIG_MAX_SECONDS = 60  # measured 0.7 to 1.3 s with file I/O on a loaded 2-core VM


def _big_scene(root: Path, n: int = 4096, targets: int = 500, seed: int = 0) -> np.ndarray:
    """Smooth background plus ``targets`` small Gaussian blobs on a 16-pixel grid, jittered by
    up to 3 pixels (so at least 10 pixels apart); writes images/big.png and points.csv."""
    rng = np.random.default_rng(seed)
    low = ndimage.gaussian_filter(rng.normal(size=(64, 64)), 2).astype(np.float32)
    low = (low - low.min()) / (np.ptp(low) + 1e-9)
    img = 0.25 + 0.15 * np.kron(low, np.ones((n // 64, n // 64), np.float32))
    img = ndimage.uniform_filter(img, 65)  # smooth the blocks' edges
    g = n // 16 - 2
    cells = rng.choice(g * g, targets, replace=False)
    cy, cx = np.divmod(cells, g)
    ys = (cy + 1) * 16 + rng.integers(-3, 4, targets)
    xs = (cx + 1) * 16 + rng.integers(-3, 4, targets)
    yy, xx = np.mgrid[-6:7, -6:7]
    for y, x, s, a in zip(ys, xs, rng.uniform(0.8, 1.5, targets), rng.uniform(0.3, 0.5, targets)):
        img[y - 6:y + 7, x - 6:x + 7] += a * np.exp(-(yy ** 2 + xx ** 2) / (2 * s * s))
    write_png_atomic(root / "images" / "big.png", np.clip(np.floor(img * 255 + 0.5), 0, 255).astype(np.uint8))
    (root / "points.csv").write_text("image,x,y\n" + "".join(f"big,{x},{y}\n" for x, y in zip(xs, ys)))
    return np.stack([xs, ys], 1)


@pytest.mark.slow
def test_4096x4096_image_with_500_targets_memory_and_time(tmp_path):
    root = tmp_path / "BIG"
    points = _big_scene(root)
    out = tmp_path / "labels"
    script = tmp_path / "big.py"
    script.write_text(BIG_SCRIPT)
    # Linux hands a child the parent's peak RSS (ru_maxrss survives fork and exec): start Python
    # from a small shell so that the baseline is this script's own, not pytest's
    command = [sys.executable, str(script), str(root), str(root / "points.csv"), str(out)]
    proc = subprocess.run(["/bin/sh", "-c", '"$@"; exit $?', "sh", *command],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _last_json(proc.stdout)
    growth_mb = (m["maxrss_after_kb"] - m["maxrss_before_kb"]) / 1024  # ru_maxrss is in KiB on Linux
    hwm = ((m["hwm_after_kb"] - m["hwm_before_kb"]) / 1024) if m["hwm_after_kb"] else float("nan")
    print(f"\n4096x4096, 500 targets: peak RSS growth {growth_mb:.0f} MB (ru_maxrss {m['maxrss_before_kb'] / 1024:.0f} "
          f"-> {m['maxrss_after_kb'] / 1024:.0f} MB; VmHWM growth {hwm:.0f} MB), {m['wall_seconds']:.2f} s with file I/O, "
          f"{m['report']['seconds']:.2f} s annotation compute ({m['report']['ms_per_target']} ms per target)")
    assert m["report"]["targets"] == 500 and m["report"]["images"] == 1
    assert 0 < growth_mb < BIG_MAX_GROWTH_MB  # 0: the baseline was not this process's own
    assert m["wall_seconds"] < BIG_MAX_SECONDS
    mask = read_gray(out / "big.png") > 0.5
    assert mask.shape == (4096, 4096)
    assert mask[points[:, 1], points[:, 0]].all()  # every point's pixel is in the mask
    labels, n = label_targets(mask)
    assert n == 500 and mask.sum() < 500 * 40  # one small component per target, no flooding
    assert len(set(labels[points[:, 1], points[:, 0]].tolist())) == 500
    np.testing.assert_array_equal(read_points_csv(root / "points.csv")["big"], points)


# ------------------------------------------------------------------------------------------------
# 4. kill -9 in the middle of annotate
# ------------------------------------------------------------------------------------------------


def test_annotate_killed_mid_run_resumes_to_byte_identical_output(tmp_path):
    root = write_dataset(tmp_path / "SYN", n_images=60, seed=21, height=128, width=128)
    ids = IRDataset(root).ids("all")

    def args(out):
        return ["annotate", "--dataset", root, "--points", "centroid", "--out", out, "--batch-images", "1", "--quiet"]

    ref_out, out = tmp_path / "reference", tmp_path / "killed"
    victim = _popen(args(out), tmp_path)
    killer = _Killer(victim, lambda: len(_pngs(out)) >= 10)
    killer.start()
    assert main([str(a) for a in args(ref_out)]) == 0  # the uninterrupted run, meanwhile, in this process
    assert killer.result(), f"annotate ended before it could be killed: {victim.communicate()[1][-2000:]}"
    done = _pngs(out)
    assert 10 <= len(done) < len(ids)
    _assert_complete_pngs(out)  # what the killed run left is complete (atomic writes)
    # a write cut by the kill leaves a temporary file: make sure one is there for the resume to handle
    (out / f".{ids[-1]}.png.{victim.pid}.0badf00d.tmp").write_bytes(b"\x89PNG partial")
    resumed = _run(args(out), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = _last_json(resumed.stdout)
    assert report["skipped"] == len(done) and report["images"] == len(ids) - len(done)
    a, b = _files(ref_out), _files(out)
    assert MANIFEST in a and MANIFEST in b
    assert sorted(a) == sorted(b) == sorted([MANIFEST] + [f"{i}.png" for i in ids])
    assert [n for n in a if a[n] != b[n]] == []


# ------------------------------------------------------------------------------------------------
# 5. kill -9 during train, and crashes between the files of one epoch
# ------------------------------------------------------------------------------------------------


def _strip_seconds(records) -> list:
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in records]


def _log(run: Path) -> list:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def train_root(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("train") / "SYN", n_images=8, seed=0, height=64, width=64)


@pytest.mark.slow
def test_train_killed_mid_run_resumes_to_identical_weights_and_log(tmp_path):
    root = write_dataset(tmp_path / "SYN", n_images=16, seed=4, height=64, width=64)

    def args(run):
        return ["train", "--dataset", root, "--out", run, "--epochs", "4", *TRAIN_ARGS]

    ref_run, run = tmp_path / "reference", tmp_path / "killed"
    victim = _popen(args(run), tmp_path)
    # log.jsonl is written before last.pt: kill once both hold the first epoch
    killer = _Killer(victim, lambda: (run / "last.pt").is_file() and len(_log(run)) >= 1)
    killer.start()
    Trainer(root, ref_run, tiny(4), progress=False).fit()  # the uninterrupted run, meanwhile
    assert killer.result(), f"train ended before it could be killed: {victim.communicate()[1][-2000:]}"
    epoch = load_checkpoint(run / "last.pt")["epoch"]
    assert 1 <= epoch < 4, f"the kill came too late (last.pt at epoch {epoch})"
    resumed = _run(args(run) + ["--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {run} at epoch {epoch}" in resumed.stderr
    a = torch.load(ref_run / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4 and a["best_val"] == b["best_val"]
    for part in ("model", "meta", "theta"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=f"{part}.{key}")
    assert [r["epoch"] for r in _log(run)] == [0, 1, 2, 3]
    assert _strip_seconds(_log(run)) == _strip_seconds(_log(ref_run))
    assert _temps(run) == []


@pytest.mark.parametrize("after", ["last.pt", "log.jsonl"])
def test_a_crash_between_the_files_of_an_epoch_loses_no_log_record(train_root, tmp_path, monkeypatch, after):
    """The process dies right after writing ``after`` in epoch 2 of 3; the resumed run's
    log.jsonl must hold every epoch, as the uninterrupted run's does."""
    reference = Trainer(train_root, tmp_path / "reference", tiny(3), progress=False)
    reference.fit()
    run = tmp_path / "run"
    trainer = Trainer(train_root, run, tiny(3), progress=False)
    real = B.write_bytes_atomic

    def dying_write(path, data):
        result = real(path, data)
        if Path(path).name == after and trainer.epoch == 2:
            raise Killed
        return result

    monkeypatch.setattr(B, "write_bytes_atomic", dying_write)
    with pytest.raises(Killed):
        trainer.fit()
    monkeypatch.undo()
    resumed = Trainer(train_root, run, tiny(3), progress=False)
    resumed.load_state(load_checkpoint(run / "last.pt"))
    resumed.fit()
    assert [r["epoch"] for r in _log(run)] == [0, 1, 2]
    assert _strip_seconds(_log(run)) == _strip_seconds(_log(tmp_path / "reference"))
    for key, value in reference.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------------------------------------
# 6. Checkpoint safety
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted_run(train_root, tmp_path_factory):
    """A unet run of 2 epochs stopped after the first (what ``--resume`` continues)."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    fit_until(Trainer(train_root, run, tiny(2), progress=False), 1)
    torch.set_num_threads(n)
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    return run


def _train_args(root, run, *extra):
    return ["train", "--dataset", str(root), "--out", str(run), "--epochs", "2", *TRAIN_ARGS, *extra]


def test_resuming_with_another_model_is_refused(train_root, interrupted_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(interrupted_run, run)
    before = _files(run)
    assert main(_train_args(train_root, run, "--model", "alclnet", "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and str(run / "last.pt") in err and "'model': ('unet', 'alclnet')" in err
    assert _files(run) == before


@pytest.mark.parametrize("how", ["weights-of-another-model", "config-of-another-model", "unknown-model",
                                 "missing-tensor"])
def test_weights_that_do_not_fit_are_a_clear_error(train_root, interrupted_run, tmp_path, capsys, how):
    run = tmp_path / "run"
    shutil.copytree(interrupted_run, run)
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    if how == "weights-of-another-model":
        state["model"] = build_model("alclnet").state_dict()
    elif how == "config-of-another-model":
        state["config"]["model"] = "dnanet"
    elif how == "unknown-model":
        state["config"]["model"] = "resnet-9000"
    else:
        state["model"].pop(next(iter(state["model"])))
    torch.save(state, run / "last.pt")
    assert main(["test", "--checkpoint", str(run / "last.pt"), "--dataset", str(train_root), "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and str(run / "last.pt") in err and "do not fit" in err
    if how in ("weights-of-another-model", "missing-tensor"):  # (--resume refuses other settings, above)
        before = _files(run)
        assert main(_train_args(train_root, run, "--resume")) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and str(run / "last.pt") in err and "do not fit" in err
        assert _files(run) == before


def _not_a_checkpoint(kind: str, good: Path) -> bytes:
    if kind == "empty":
        return b""
    if kind == "random-bytes":
        return np.random.default_rng(9).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    if kind == "truncated":
        data = good.read_bytes()
        return data[: len(data) // 2]
    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(3)}, buf)  # a torch file, but not ours
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["empty", "random-bytes", "truncated", "foreign-torch-file"])
def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(train_root, interrupted_run, tmp_path, capsys, kind):
    run = tmp_path / "run"
    shutil.copytree(interrupted_run, run)
    (run / "last.pt").write_bytes(_not_a_checkpoint(kind, interrupted_run / "last.pt"))
    before = _files(run)
    for args in (["test", "--checkpoint", str(run / "last.pt"), "--dataset", str(train_root), "--json"],
                 _train_args(train_root, run, "--resume")):
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and str(run / "last.pt") in err, err
    assert _files(run) == before


@pytest.mark.parametrize("where", ["write", "rename"])
def test_full_disk_during_a_checkpoint_keeps_the_previous_one(train_root, tmp_path, monkeypatch, capsys, where):
    run = tmp_path / "run"
    args = ["train", "--dataset", str(train_root), "--out", str(run), "--epochs", "3", *TRAIN_ARGS]
    seen = {"last.pt": 0}
    kept = {}

    def disk_full(target: str) -> None:
        if target == "last.pt":
            seen["last.pt"] += 1
            if seen["last.pt"] == 2:  # the second save of last.pt
                kept["bytes"] = (run / "last.pt").read_bytes()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "write":
        real_fsync = D.os.fsync

        def fsync(fd):
            name = os.readlink(f"/proc/self/fd/{fd}")
            disk_full("last.pt" if Path(name).name.startswith(".last.pt.") else name)
            return real_fsync(fd)

        monkeypatch.setattr(D.os, "fsync", fsync)
    else:
        real_replace = D.os.replace

        def replace(src, dst):
            disk_full(Path(dst).name)
            return real_replace(src, dst)

        monkeypatch.setattr(D.os, "replace", replace)
    code = main(args)
    monkeypatch.undo()
    assert "bytes" in kept, "the failure was never injected"
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and err.startswith("error: ")
    assert str(run / "last.pt") in err and os.strerror(errno.ENOSPC) in err, err
    assert (run / "last.pt").read_bytes() == kept["bytes"]  # the previous last.pt, intact
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert _temps(run) == []
    assert main(args + ["--resume"]) == 0  # space again: the run continues from the kept last.pt
    assert [r["epoch"] for r in _log(run)] == [0, 1, 2]


@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_run_folder_that_cannot_be_written_is_a_clear_error(train_root, interrupted_run, tmp_path, capsys,
                                                            monkeypatch, how):
    """``chmod 0o555`` on the run folder (skipped where it does not stop this user, e.g. root), and
    the same refusal simulated (every file created in the folder raises EACCES), which runs anywhere."""
    run = tmp_path / "run"
    shutil.copytree(interrupted_run, run)
    before = _files(run)
    if how == "simulated":
        real_open = D.os.open

        def refusing_open(path, flags, *args, **kwargs):
            if Path(path).parent == run and flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(D.os, "open", refusing_open)
    else:
        os.chmod(run, 0o555)
    try:
        if how == "chmod" and os.access(run, os.W_OK):
            pytest.skip("chmod does not stop this user from writing (root)")
        code = main(_train_args(train_root, run, "--resume"))
        monkeypatch.undo()
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 1 and err.startswith("error: cannot write ") and str(run) in err, err
        assert os.strerror(errno.EACCES) in err, err
        assert _files(run) == before
        assert _temps(run) == []
    finally:
        os.chmod(run, 0o755)
