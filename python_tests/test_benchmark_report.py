"""benchmarks/ops/report.py's table and the GPU bandwidth model it holds GPU rows against."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "ops"))  # report.py's folder
import gpu_limits  # noqa: E402
import report  # noqa: E402

# torch.cuda.get_device_properties of an H100 SXM (clock rates in kHz)
H100 = SimpleNamespace(memory_clock_rate=2_619_000, memory_bus_width=5120, multi_processor_count=132,
                       clock_rate=1_980_000)


def test_peak_bandwidths_from_device_properties():
    peaks = gpu_limits.peak_bandwidths(H100)
    assert peaks["dram"] == pytest.approx(3.352e12, rel=1e-3)  # the H100 SXM's quoted 3.35 TB/s
    assert peaks["smem"] == pytest.approx(132 * 1.98e9 * 128)


def test_traffic_models():
    assert gpu_limits.diffuse_forward_traffic(1000, 4) == {"smem": 1000 * 11 * 4}
    # forward reads logits and target, the backward reads them again and writes each gradient
    assert gpu_limits.soft_iou_traffic(10, 4, target_grad=False) == {"dram": 10 * 5 * 4}
    assert gpu_limits.soft_iou_traffic(10, 8, target_grad=True) == {"dram": 10 * 6 * 8}


def bench(name, group, median, **extra):
    return {"name": name, "group": group, "stats": {"median": median}, "extra_info": extra}


def test_table_gives_speed_up_rate_and_the_gpu_share():
    peaks = gpu_limits.peak_bandwidths(H100)
    steps = 10**9
    traffic = gpu_limits.diffuse_forward_traffic(steps, 4)  # 44 GB in shared memory
    data = {"benchmarks": [
        bench("test_diffuse_forward[d2d-case-cuda]", "diffuse forward, cuda", 0.004, pixel_steps=steps, traffic=traffic),
        bench("test_diffuse_forward[torch-reference-case-cuda]", "diffuse forward, cuda", 0.2, pixel_steps=steps),
        bench("test_diffuse_forward[d2d-case-cpu]", "diffuse forward, cpu", 0.5, pixel_steps=steps),
        bench("test_diffuse_forward[torch-reference-case-cpu]", "diffuse forward, cpu", 5.0, pixel_steps=steps),
        bench("test_diffuse_forward[torch-compile-case-cpu]", "diffuse forward, cpu", 1.5, first_call_s=12.34),
        bench("test_soft_iou[d2d-cpu]", "soft-IoU, cpu, ours only", 1.0),  # no reference: left out
    ]}
    text = report.table(data, peaks)
    share = 44e9 / 0.004 / peaks["smem"]  # 11 TB/s of 33.5
    assert (f"| diffuse forward, cuda | 4.00 ms (250.00 G pixel-steps/s; {100 * share:.0f}% of shared-memory "
            f"bandwidth in useful pixel-steps (11.0 of 33.5 TB/s)) | 200.00 ms | 50.0x | not run |  |") in text
    assert ("| diffuse forward, cpu | 500.00 ms (2.00 G pixel-steps/s) | 5000.00 ms | 10.0x "
            "| 1500.00 ms (12.3 s) | 3.0x |") in text
    assert "ours only" not in text
    # without a GPU (peaks None) the rows carry no share
    assert "shared-memory" not in report.table(data, None)
