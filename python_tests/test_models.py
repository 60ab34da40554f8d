"""Tests of d2d_ext.models: the U-Net, DNANet and ALCL-Net detectors and their helpers."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import d2d_ext
from basicirstd_dnanet import their_net as their_net_with
from d2d_ext.models import (
    MODEL_NAMES,
    PRIOR_BIAS,
    ALCLNet,
    DNANet,
    LogitHead,
    UNet,
    build_model,
    count_parameters,
    final_logits,
)

# (name, constructor kwargs, number of outputs: None for a single tensor)
CONFIGS = [
    ("unet", {}, None),
    ("dnanet", {}, 4),
    ("dnanet", {"deep_supervision": False}, None),
    ("alclnet", {}, None),
    ("alclnet", {"deep_supervision": True}, 4),
]
CONFIG_IDS = [f"{n}-{'ds' if k else 'single'}" for n, _, k in CONFIGS]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run this module on one intra-op thread, restored afterwards: the networks are tiny here, and
    on a 2-core machine shared with other work, two threads spin against each other and the module
    runs several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(one_thread):
    """One eval-mode instance per configuration, built once for the whole module."""
    torch.manual_seed(0)
    return {cid: build_model(name, **kw).eval() for cid, (name, kw, _) in zip(CONFIG_IDS, CONFIGS)}


def as_list(output):
    return list(output) if isinstance(output, (list, tuple)) else [output]


# ------------------------------------------------------------------------------ parameter counts


def test_parameter_counts():
    counts = {
        "DNANet": count_parameters(DNANet(filters=(16, 32, 64, 128, 256), blocks=(2, 2, 2, 2))),
        "ALCLNet": count_parameters(ALCLNet()),
        "UNet": count_parameters(UNet()),
    }
    print("parameter counts:", counts)
    assert 4.2e6 <= counts["DNANet"] <= 5.2e6, counts
    assert 5.1e6 <= counts["ALCLNet"] <= 6.3e6, counts
    assert 2e5 <= counts["UNet"] < 1e6, counts


def test_count_parameters_counts_elements_and_respects_trainable_only():
    lin = nn.Linear(3, 2)  # 6 weights + 2 biases
    assert count_parameters(lin) == 8
    lin.weight.requires_grad_(False)
    assert count_parameters(lin) == 8
    assert count_parameters(lin, trainable_only=True) == 2
    assert count_parameters(nn.BatchNorm2d(4)) == 8  # running stats are buffers, not counted


def test_dnanet_nodes_take_the_dense_nested_inputs():
    """Node X[i][j] (j >= 1) reads its row's j earlier nodes, the deeper node and, below the top
    row, the shallower node; stage X[i][0] / X[i][j] has 1 block on the top row, blocks[i-1] below."""
    f, blocks = (16, 32, 64, 128, 256), (2, 3, 2, 1)
    model = DNANet(filters=f, blocks=blocks)
    assert len(model.nodes) == 15
    for key, stage in model.nodes.items():
        i, j = map(int, key.split("_"))
        expected_in = (1 if i == 0 else f[i - 1]) if j == 0 else j * f[i] + f[i + 1] + (f[i - 1] if i else 0)
        first_conv = stage[0].body[0][0]
        assert first_conv.in_channels == expected_in, key
        assert first_conv.out_channels == f[i], key
        assert len(stage) == (1 if i == 0 else blocks[i - 1]), key


def test_deep_supervision_adds_only_the_side_heads():
    # DNANet: 3 side heads of 16 -> 1 (17 parameters each).
    with_ds = count_parameters(DNANet(deep_supervision=True))
    without = count_parameters(DNANet(deep_supervision=False))
    assert with_ds - without == 3 * 17


# ------------------------------------------------------------------------------ output shapes


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (70, 90)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("cid", CONFIG_IDS)
def test_output_shapes(models, cid, size):
    n_out = dict(zip(CONFIG_IDS, (k for _, _, k in CONFIGS)))[cid]
    x = torch.rand(2, 1, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = models[cid](x)
    if n_out is None:
        assert isinstance(out, torch.Tensor)
    else:
        assert isinstance(out, list) and len(out) == n_out
    for o in as_list(out):
        assert o.shape == (2, 1, *size)
        assert o.dtype == torch.float32
        assert torch.isfinite(o).all()
    assert final_logits(out) is as_list(out)[-1]


def test_deep_supervision_list_lengths_follow_the_levels():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        three_levels = DNANet(filters=(8, 16, 32), blocks=(1, 1)).eval()(x)
        assert isinstance(three_levels, list) and len(three_levels) == 2
        assert isinstance(DNANet(filters=(8, 16, 32), blocks=(1, 1), deep_supervision=False).eval()(x), torch.Tensor)


@pytest.mark.parametrize("name", ["unet", "dnanet", "alclnet"])
def test_padding_is_replicate_then_crop(name):
    """A size that is not a multiple of 16 gives the top-left crop of the output on the
    edge-replicated input of the next multiple of 16."""
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.rand(1, 1, 36, 21)
    padded = F.pad(x, (0, 32 - 21, 0, 48 - 36), mode="replicate")
    with torch.no_grad():
        out = final_logits(model(x))
        ref = final_logits(model(padded))[..., :36, :21]
    assert out.shape == (1, 1, 36, 21)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_in_channels_and_input_checks():
    torch.manual_seed(0)
    with torch.no_grad():
        for name in ("unet", "dnanet", "alclnet"):
            model = build_model(name, in_channels=3).eval()
            assert final_logits(model(torch.rand(1, 3, 32, 32))).shape == (1, 1, 32, 32)
            with pytest.raises(ValueError, match="expects"):
                model(torch.rand(1, 1, 32, 32))
            with pytest.raises(ValueError, match="expects"):
                model(torch.rand(3, 32, 32))


def test_final_logits():
    a, b = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    assert final_logits([a, b]) is b
    assert final_logits((a, b)) is b
    assert final_logits(a) is a
    with pytest.raises(ValueError):
        final_logits([])


# ------------------------------------------------------------------------------ training


@pytest.mark.parametrize("cid", CONFIG_IDS)
def test_gradients_reach_every_parameter(cid):
    name, kw, n_out = dict(zip(CONFIG_IDS, CONFIGS))[cid]
    torch.manual_seed(0)
    model = build_model(name, **kw).train()
    out = model(torch.rand(2, 1, 32, 32))
    if n_out is None:
        loss = final_logits(out).sum()
    else:
        loss = torch.stack([o.sum() for o in out]).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"


@pytest.mark.parametrize("cid", CONFIG_IDS)
def test_heads_start_from_the_background_prior(cid):
    name, kw, n_out = dict(zip(CONFIG_IDS, CONFIGS))[cid]
    torch.manual_seed(0)
    model = build_model(name, **kw).train()
    heads = [m for m in model.modules() if isinstance(m, LogitHead)]
    assert len(heads) == (n_out or 1)
    for h in heads:
        assert torch.all(h.bias == PRIOR_BIAS)
    with torch.no_grad():
        for o in as_list(model(torch.rand(2, 1, 32, 32))):
            p = torch.sigmoid(o).mean().item()
            assert 0.3 * torch.sigmoid(torch.tensor(PRIOR_BIAS)).item() < p < 0.05, p


def test_convolutions_are_kaiming_initialised():
    torch.manual_seed(0)
    conv = UNet(base=16).encoder[2][1][0]  # level 2, second conv: 64 -> 64, 3x3
    assert isinstance(conv, nn.Conv2d) and conv.weight.shape == (64, 64, 3, 3)
    expected = math.sqrt(2.0 / (64 * 9))  # fan-out, ReLU gain
    assert abs(conv.weight.std().item() / expected - 1) < 0.05


def test_unet_overfits_one_blob():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    image = 0.2 + 0.05 * torch.rand(1, 1, 32, 32, generator=g)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 14:17, 10:13] = 1.0
    image[mask.bool()] = 1.0
    model = UNet().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = d2d_ext.soft_iou(model(image), mask).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = d2d_ext.soft_iou(model(image), mask).mean().item()
    assert first > 0.8, first  # the prior head starts far from the mask
    assert final < 0.3, (first, final)


# ------------------------------------------------------------------------------ build_model


@pytest.mark.parametrize(
    "name, cls", [("unet", UNet), ("UNet", UNet), ("dnanet", DNANet), ("DNANet", DNANet), ("ALCLNet", ALCLNet), ("alclnet", ALCLNet)]
)
def test_build_model_names(name, cls):
    assert type(build_model(name)) is cls


def test_build_model_passes_kwargs():
    assert count_parameters(build_model("UNET", base=8)) < count_parameters(build_model("unet", base=16))
    assert build_model("dnanet", deep_supervision=False).deep_supervision is False
    assert build_model("alclnet", in_channels=3).in_channels == 3
    assert set(MODEL_NAMES) == {"unet", "dnanet", "alclnet"}


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError) as err:
        build_model("resnet")
    for valid in ("unet", "dnanet", "alclnet"):
        assert valid in str(err.value)
    with pytest.raises(TypeError):
        build_model("unet", no_such_argument=1)


# ------------------------------------------------------------------------------ predict


@pytest.mark.parametrize("cid", CONFIG_IDS)
def test_predict_is_the_sigmoid_of_the_final_output_in_eval_mode(cid):
    name, kwargs, _ = dict(zip(CONFIG_IDS, CONFIGS))[cid]
    torch.manual_seed(3)
    model = build_model(name, **kwargs)
    x = torch.randn(2, 1, 32, 48, generator=torch.Generator().manual_seed(4))
    model.train()  # predict switches to eval (running statistics) and back
    prob = model.predict(x)
    assert model.training and not prob.requires_grad
    with torch.no_grad():
        expected = torch.sigmoid(final_logits(model.eval()(x)))
    assert prob.shape == (2, 1, 32, 48)
    torch.testing.assert_close(prob, expected, rtol=0, atol=0)
    # eval mode: an image's map does not depend on the rest of the batch
    torch.testing.assert_close(model.predict(x[:1]), prob[:1], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ BasicIRSTD / LESPS checkpoints


@pytest.fixture(scope="module")
def their_net(one_thread):
    return their_net_with()


def _their_image(batch=2, size=32):
    return torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def test_basicirstd_dnanet_checkpoint_gives_their_outputs(their_net):
    from d2d_ext.models import load_checkpoint

    state = their_net.state_dict()
    assert "model.conv0_0.0.conv1.bias" in state and "model.conv1_0.0.shortcut.0.bias" in state
    assert state["model.conv0_0.0.conv1.bias"].abs().min() > 0
    model = load_checkpoint({"epoch": 400, "state_dict": state})
    assert model.head.weight.dtype == torch.float64  # the file's dtype: nothing rounded on the way
    assert not model.training and model.deep_supervision and model.resampling == "original"
    x = _their_image()
    with torch.no_grad():
        theirs = their_net.model(x)
        ours = [torch.sigmoid(o) for o in model(x)]
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.predict(x), theirs[-1], rtol=0, atol=1e-12)
    # the folded bias is exact in train mode too: the batch mean absorbs it
    their_net.train()
    model.train()
    with torch.no_grad():
        torch.testing.assert_close(torch.sigmoid(model(x)[-1]), their_net.model(x)[-1], rtol=0, atol=1e-10)
    their_net.eval()
    # d2d's own resampling (max-pooled shallower node, align_corners=False) is another network
    other = load_checkpoint(state, resampling="d2d")
    assert (other.predict(x) - theirs[-1]).abs().max() > 1e-3


def test_checkpoint_files_wrappers_and_prefixes(tmp_path, their_net):
    """A path to a .pth.tar as LESPS writes it (NumPy scalars beside the weights), a {'net': ...}
    wrapper, and DataParallel's 'module.' prefix all load to the same model."""
    import numpy as np

    from d2d_ext.models import load_checkpoint

    state = their_net.state_dict()
    path = tmp_path / "DNANet_LESPS_centroid.pth.tar"
    torch.save({"epoch": 10, "state_dict": state, "total_loss": [0.5], "train_iou_list": [np.float64(0.61)]}, path)
    x = _their_image(batch=1)
    expected = their_net.model(x)[-1].detach()
    parallel = {f"module.{k}": v for k, v in state.items()}
    for source in (path, str(path), {"net": parallel}, parallel):
        torch.testing.assert_close(load_checkpoint(source).predict(x), expected, rtol=0, atol=1e-12)


def test_checkpoint_layout_is_read_from_the_weights():
    from d2d_ext.models import convert_checkpoint, load_checkpoint

    net = their_net_with(seed=1, num_blocks=(1, 2, 1, 3), deep_supervision=False)
    converted = convert_checkpoint(net.state_dict())
    assert converted.model == "dnanet"
    assert converted.kwargs == {"in_channels": 1, "filters": [16, 32, 64, 128, 256], "blocks": [1, 2, 1, 3],
                                "deep_supervision": False, "resampling": "original"}
    model = load_checkpoint(net.state_dict())
    x = _their_image(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(torch.sigmoid(model(x)), net.model(x)[-1], rtol=0, atol=1e-12)


def test_checkpoint_that_does_not_fit_is_a_short_clear_error(tmp_path, their_net):
    from d2d_ext.models import load_checkpoint

    state = dict(their_net.state_dict())
    state.pop("model.conv2_1.1.bn1.running_var")
    state["model.conv9_9.0.conv1.weight"] = torch.zeros(3)
    with pytest.raises(ValueError) as err:
        load_checkpoint(state)
    message = str(err.value)
    assert "conv9_9.0.conv1.weight" in message and "nodes.2_1.1.body.0.1.running_var" in message
    assert len(message) < 600 and "\n" not in message
    with pytest.raises(ValueError, match=r"shape mismatches \(file vs model\): fuse\.body\.0\.0\.weight "
                                         r"\(16, 80, 3, 3\) vs \(32, 160, 3, 3\)") as err:
        load_checkpoint(their_net.state_dict(), filters=(32, 32, 64, 128, 256))
    assert len(str(err.value)) < 800
    with pytest.raises(ValueError, match="no backbone nodes"):
        load_checkpoint({"state_dict": {"encoder.weight": torch.zeros(2)}})
    with pytest.raises(ValueError, match="valid models: dnanet"):
        load_checkpoint(their_net.state_dict(), model="acm")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot load checkpoint .*bad.pth"):
        load_checkpoint(bad)
