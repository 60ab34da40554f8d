"""What the GPU figures of the benchmark report are measured against.

A fused op on the GPU is bound by a bandwidth, not by arithmetic: the diffusion runs its steps
in shared memory (each pixel-step reads 5 coefficients and 5 states and writes 1 state there,
11 words, and touches global memory only once per launch of up to 8 steps), and soft-IoU
forward+backward streams its inputs from DRAM (forward: logits and target; backward: logits and
target again, and writes each gradient asked for). The device's peaks come from its properties:

- DRAM: 2 transfers per memory clock over the bus, ``2 * memory_clock_rate * bus_width / 8``;
- shared memory: 32 banks of 4 bytes per clock per multiprocessor, ``SMs * clock_rate * 128``.

So the report's share is achieved bytes per second (the op's traffic under this model over its
median time) against the peak that binds it. Clock rates are torch's (kHz, the boost clock).
Two caveats: the diffusion count is of useful pixel-steps, while the tiles of a large image also
recompute their halos (about 1.7 times the useful steps for 256x256 images; 1.0 for 32x32 crops,
which fit one tile), so it is a share of useful work; and soft-IoU only reaches DRAM once its
inputs outgrow the L2 cache (50 MB on an H100), hence the GPU-only large case of the benchmark.
"""

SMEM_WORDS_PER_PIXEL_STEP = 11  # diffusion forward: 5 coefficients + 5 states read, 1 state written


def peak_bandwidths(props) -> dict:
    """``{"dram": B/s, "smem": B/s}`` from a ``torch.cuda.get_device_properties`` object."""
    return {
        "dram": 2 * props.memory_clock_rate * 1e3 * props.memory_bus_width / 8,
        "smem": props.multi_processor_count * props.clock_rate * 1e3 * 128,
    }


def diffuse_forward_traffic(pixel_steps: int, itemsize: int) -> dict:
    """Shared-memory bytes of ``pixel_steps`` pixel-steps of the fused diffusion forward."""
    return {"smem": pixel_steps * SMEM_WORDS_PER_PIXEL_STEP * itemsize}


def soft_iou_traffic(elements: int, itemsize: int, target_grad: bool) -> dict:
    """DRAM bytes of one soft-IoU forward+backward over ``elements`` elements per input."""
    words = 2 + 2 + 1 + (1 if target_grad else 0)
    return {"dram": elements * words * itemsize}


def share_of_peak(traffic: dict, seconds: float, peaks: dict) -> str:
    """``"41% of DRAM bandwidth (1.4 of 3.4 TB/s)"`` for the binding limit in
    ``traffic`` (bytes by limit) moved in ``seconds``."""
    names = {"dram": "DRAM bandwidth", "smem": "shared-memory bandwidth in useful pixel-steps"}
    (limit, nbytes), = traffic.items()
    achieved = nbytes / seconds
    return (f"{100 * achieved / peaks[limit]:.0f}% of {names[limit]} "
            f"({achieved / 1e12:.1f} of {peaks[limit] / 1e12:.1f} TB/s)")
