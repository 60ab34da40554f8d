"""Detector networks for infrared small-target detection (ISTD).

Every model maps an image batch ``(B, C, H, W)`` (``C = in_channels``, 1 by default) to logits
``(B, 1, H, W)`` at the input resolution (apply a sigmoid for probabilities), or, with deep
supervision on, to a list of such logit maps whose last element is the final output
(:func:`final_logits` picks it). Inputs whose height or width is not a multiple of the model's
total stride (16 for all three with their default depths) are padded
internally at the bottom and right by edge replication, and the outputs are cropped back, so any
size works; multiples of 16 pass through unpadded.

- :class:`UNet`: a small U-Net (about 0.49 M parameters at ``base = 16``) for CPU runs and demos.
- :class:`DNANet`: the Dense Nested Attention Network (Li et al., IEEE TIP 2023), about 4.7 M.
- :class:`ALCLNet`: the attention-based local contrast learning network (Yu et al., IEEE GRSL
  2022), about 5.7 M.

Initialisation: convolutions get Kaiming-normal weights (fan-out, ReLU gain) and zero biases,
batch norms unit scale and zero shift. The 1-channel output heads get small weights
(``N(0, 0.01^2)``) and the bias :data:`PRIOR_BIAS` ``= -4`` (``sigmoid(-4) ~ 0.018``), the
RetinaNet-style prior for a task where almost every pixel is background: training starts from
"nothing here" instead of from a coin flip per pixel, which keeps the first soft-IoU gradients from
being dominated by the background.

Helpers: :func:`build_model` (by name), :func:`count_parameters`, :func:`final_logits`;
``model.predict(x)`` of every model gives the single probability map of BasicIRSTD / LESPS test code;
:func:`load_checkpoint` (and :func:`convert_checkpoint`) reads their DNANet checkpoints.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import List, NamedTuple, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "PRIOR_BIAS",
    "ConvBNReLU",
    "DoubleConv",
    "ChannelAttention",
    "SpatialAttention",
    "ResCBAMBlock",
    "ResidualBlock",
    "ResidualDownBlock",
    "LocalContrast",
    "SBAM",
    "LogitHead",
    "UNet",
    "DNANet",
    "ALCLNet",
    "MODEL_NAMES",
    "DNANET_RESAMPLINGS",
    "CHECKPOINT_MODELS",
    "ConvertedWeights",
    "build_model",
    "count_parameters",
    "final_logits",
    "convert_checkpoint",
    "load_checkpoint",
]

#: Initial bias of every output head: the logit of a ~1.8 % foreground prior.
PRIOR_BIAS = -4.0

#: :class:`DNANet`'s resampling conventions: d2d's own, or that of the authors' code.
DNANET_RESAMPLINGS = ("d2d", "original")

ModelOutput = Union[torch.Tensor, List[torch.Tensor]]


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


class ConvBNReLU(nn.Sequential):
    """``k x k`` convolution (no bias, "same" padding), batch norm, ReLU: ``(B, in, H, W)`` to
    ``(B, out, H / stride, W / stride)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two :class:`ConvBNReLU` (3x3): ``(B, in, H, W)`` to ``(B, out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels))


class ChannelAttention(nn.Module):
    """CBAM channel attention: a shared bottleneck MLP (1x1 convolutions, reduction ``ratio``) on
    the global average- and max-pooled features, summed, sigmoid.

    ``(B, C, H, W)`` to the weights ``(B, C, 1, 1)`` in (0, 1).
    """

    def __init__(self, channels: int, ratio: int = 16):
        super().__init__()
        hidden = max(1, channels // ratio)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a ``k x k`` convolution of the channel-wise mean and max, sigmoid.

    ``(B, C, H, W)`` to the weights ``(B, 1, H, W)`` in (0, 1).
    """

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class ResCBAMBlock(nn.Module):
    """Residual block with CBAM attention (DNANet's node): ``conv3x3-BN-ReLU-conv3x3-BN``, then
    channel attention and spatial attention applied in turn, plus the shortcut (identity, or a
    1x1 convolution + BN where the width changes), ReLU.

    ``(B, in, H, W)`` to ``(B, out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            ConvBNReLU(in_channels, out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.channel_att = ChannelAttention(out_channels)
        self.spatial_att = SpatialAttention()
        if in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        out = out * self.channel_att(out)
        out = out * self.spatial_att(out)
        return F.relu(out + self.shortcut(x))


def _res_cbam_stage(in_channels: int, out_channels: int, n_blocks: int) -> nn.Sequential:
    """``n_blocks`` (>= 1) :class:`ResCBAMBlock`: the first changes the width, the rest keep it."""
    blocks = [ResCBAMBlock(in_channels, out_channels)]
    blocks += [ResCBAMBlock(out_channels, out_channels) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


class ResidualBlock(nn.Module):
    """ResNet basic block at constant width: ``relu(x + BN(conv3x3(ReLU(BN(conv3x3(x))))))``.

    ``(B, C, H, W)`` to ``(B, C, H, W)``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            ConvBNReLU(channels, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class ResidualDownBlock(nn.Module):
    """ALCL-Net's down-sampling residual block: main path ``conv3x3-BN-ReLU``, 2x2 max pool,
    ``conv3x3-BN``; shortcut a stride-2 ``conv3x3-BN-ReLU``; sum, ReLU.

    ``(B, in, H, W)`` to ``(B, out, H / 2, W / 2)`` (``H``, ``W`` even).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            ConvBNReLU(in_channels, out_channels),
            nn.MaxPool2d(2),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = ConvBNReLU(in_channels, out_channels, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class LocalContrast(nn.Module):
    """Local contrast learning (LCL): a learnable local-contrast measure.

    A ``r x r`` convolution + ReLU summarises the centre cell (``r = 1``: a per-pixel channel
    mixing), then a 3x3 convolution with dilation ``r`` + ReLU weighs that centre against its 8
    surrounding cells at distance ``r``: the hand-crafted local contrast measures (centre minus /
    over the surrounding mean or max) are special cases of those weights. Applied to an encoder
    level of stride ``s``, the surround lies ``r * s`` input pixels away.

    ``(B, C, H, W)`` to ``(B, C, H, W)``.
    """

    def __init__(self, channels: int, radius: int = 1):
        super().__init__()
        if radius < 1:
            raise ValueError(f"radius must be >= 1, got {radius}")
        self.radius = radius
        self.centre = nn.Conv2d(channels, channels, radius, padding="same")
        self.surround = nn.Conv2d(channels, channels, 3, padding=radius, dilation=radius)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.surround(F.relu(self.centre(x))))


class SBAM(nn.Module):
    """Simplified bilinear interpolation attention module (ALCL-Net's decoder fusion).

    The deeper map is bilinearly upsampled to the shallower map's size and projected
    (``conv1x1-BN-ReLU``); the shallower map gives a sigmoid attention (``conv1x1-BN-sigmoid``)
    that gates it; the result is added to the shallower map:
    ``out = low + proj(up(high)) * sigmoid(BN(conv(low)))``.

    ``high (B, in, h, w)`` and ``low (B, out, H, W)`` to ``(B, out, H, W)``.
    """

    def __init__(self, high_channels: int, low_channels: int):
        super().__init__()
        self.project = ConvBNReLU(high_channels, low_channels, kernel_size=1)
        self.gate = nn.Sequential(nn.Conv2d(low_channels, low_channels, 1, bias=False), nn.BatchNorm2d(low_channels))

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        high = self.project(_resize(high, low.shape[-2:]))
        return low + high * torch.sigmoid(self.gate(low))


class LogitHead(nn.Conv2d):
    """1x1 convolution to one logit channel, initialised with ``N(0, 0.01^2)`` weights and the
    :data:`PRIOR_BIAS` bias. ``(B, in, H, W)`` to ``(B, 1, H, W)``."""

    def __init__(self, in_channels: int):
        super().__init__(in_channels, 1, 1)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.01)
        nn.init.constant_(self.bias, PRIOR_BIAS)


def _resize(x: torch.Tensor, size, align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of ``(B, C, h, w)`` to ``(B, C, *size)`` (a no-op at the same size).

    With ``align_corners=True`` the corner pixels' centres map onto each other, so the result
    equals ``nn.Upsample(scale_factor=s, mode="bilinear", align_corners=True)`` wherever
    ``size = s * (h, w)``: that mode ignores the factor and uses ``(h - 1) / (size - 1)``.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions (zero bias), unit-scale batch norms; :class:`LogitHead` keeps
    its own prior initialisation."""
    for m in model.modules():
        if isinstance(m, LogitHead):
            m.reset_parameters()
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _SegmentationNet(nn.Module):
    """Base class: checks the input, pads it to a multiple of ``self.stride`` (bottom / right,
    edge replication), runs :meth:`_forward` and crops every output back to ``(H, W)``."""

    in_channels: int
    stride: int

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """``(B, C, H, W)`` to ``(B, 1, H, W)`` logits, or a list of them (deep supervision)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects a (B, {self.in_channels}, H, W) input, got {tuple(x.shape)}"
            )
        H, W = x.shape[-2:]
        pad_h = (-H) % self.stride
        pad_w = (-W) % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        out = self._forward(x)
        if not (pad_h or pad_w):
            return out
        if isinstance(out, (list, tuple)):
            return [o[..., :H, :W] for o in out]
        return out[..., :H, :W]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The single-output convention of BasicIRSTD / LESPS test code: ``(B, C, H, W)`` to one
        ``(B, 1, H, W)`` probability map in (0, 1), the sigmoid of the final output (the side
        outputs of deep supervision are dropped).

        Runs in eval mode (batch norms use their running statistics, so an image's map does not
        depend on the rest of the batch) without autograd; the module's training flag is restored
        afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            return torch.sigmoid(final_logits(self(x)))
        finally:
            self.train(was_training)

    def _forward(self, x: torch.Tensor) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# U-Net
# ----------------------------------------------------------------------------------------------


class UNet(_SegmentationNet):
    """A small U-Net for CPU runs and demos.

    ``depth`` resolution levels with ``base * 2**i`` channels at level ``i``; each level is a
    :class:`DoubleConv` (conv-BN-ReLU x2); 2x2 max pooling between encoder levels; the decoder
    upsamples bilinearly, concatenates the skip connection and applies a :class:`DoubleConv`; a
    :class:`LogitHead` gives the logits. About 0.49 M parameters at ``base = 16, depth = 4``.
    No deep supervision.

    Args:
        in_channels: input channels ``C``.
        base: channels of the first level.
        depth: number of resolution levels (``depth - 1`` poolings; inputs are padded internally
            to a multiple of ``max(16, 2 ** (depth - 1))``, like the other models).

    Shapes: ``(B, C, H, W)`` to ``(B, 1, H, W)`` logits.
    """

    def __init__(self, in_channels: int = 1, base: int = 16, depth: int = 4):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.in_channels = in_channels
        self.stride = max(16, 2 ** (depth - 1))
        widths = [base * 2**i for i in range(depth)]
        self.encoder = nn.ModuleList(
            [DoubleConv(c_in, c_out) for c_in, c_out in zip([in_channels] + widths[:-1], widths)]
        )
        # decoder[i] fuses level i + 1 (upsampled) into level i, deepest first in forward.
        self.decoder = nn.ModuleList([DoubleConv(widths[i + 1] + widths[i], widths[i]) for i in range(depth - 1)])
        self.head = LogitHead(widths[0])
        _init_weights(self)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips[-1]
        for i in reversed(range(len(self.decoder))):
            skip = skips[i]
            x = self.decoder[i](torch.cat([skip, _resize(x, skip.shape[-2:])], dim=1))
        return self.head(x)


# ----------------------------------------------------------------------------------------------
# DNANet
# ----------------------------------------------------------------------------------------------


class DNANet(_SegmentationNet):
    """Dense Nested Attention Network (Li et al., "Dense nested attention network for infrared
    small target detection", IEEE TIP 32, 2023).

    Structure (``L = len(filters)`` levels, node ``X[i][j]`` at level ``i`` (stride ``2**i``,
    ``filters[i]`` channels) and column ``j``):

    - Backbone column ``X[i][0]``: ``X[0][0]`` is one :class:`ResCBAMBlock` on the image,
      ``X[i][0]`` (``i >= 1``) is ``blocks[i-1]`` ResCBAM blocks on the max-pooled ``X[i-1][0]``.
    - Dense nested interactive module (DNIM, UNet++-style): for ``j >= 1``, ``i + j <= L - 1``,
      ``X[i][j]`` is a stage of ResCBAM blocks (one block on the top row, ``blocks[i-1]`` below)
      on the concatenation of all earlier nodes of its row ``X[i][0..j-1]`` (dense skips), the
      bilinearly upsampled deeper node ``X[i+1][j-1]`` and, for ``i >= 1``, the max-pooled
      shallower node ``X[i-1][j]`` (the interactions in both directions). The channel and spatial
      attention of every block is the paper's CSAM.
    - Feature pyramid fusion (FPFM): the top-row-facing outputs ``X[L-1-k][k]`` (``k < L-1``) are
      projected to ``filters[0]`` channels by 1x1 convolutions, upsampled to full resolution and
      concatenated with ``X[0][L-1]``; one ResCBAM block fuses them; a :class:`LogitHead` gives the
      final logits.
    - Deep supervision: :class:`LogitHead` on the top-row nodes ``X[0][1..L-2]`` plus the fused
      output: ``L - 1`` maps (4 with the reference configuration), the last the final one.

    Reference configuration ``filters = (16, 32, 64, 128, 256)``, ``blocks = (2, 2, 2, 2)``:
    about 4.7 M parameters (the paper's DNANet with ResNet-style CBAM blocks).

    Written from the paper (and its public description); differences: the convolutions in front
    of batch norms have no bias (a few thousand parameters fewer); with the default
    ``resampling="d2d"`` bilinear resizes use ``align_corners=False`` and resize to the exact
    target size (so odd intermediate sizes also work) and the shallower node enters a deeper one
    through a 2x2 max pool; all convolutions are Kaiming-initialised and the heads start from the
    background prior (see the module docstring) instead of PyTorch's default initialisation; the
    output is logits (the paper thresholds the sigmoid); the eight-connected clustering
    post-processing that turns the map into target centroids is not part of the network.

    ``resampling="original"`` resamples as the authors' code does (also the DNANet of BasicIRSTD
    and LESPS): every bilinear resize with ``align_corners=True``, and the shallower node enters
    a deeper one through a bilinear half-size resize instead of the max pool. With it, weights
    converted by :func:`load_checkpoint` give those codebases' outputs (bias-free convolutions
    lose nothing: a bias in front of a batch norm folds into its running mean).

    Args:
        in_channels: input channels ``C``.
        filters: channels per level (``L >= 2`` levels; inputs padded to a multiple of
            ``2 ** (L - 1)``).
        blocks: ResCBAM blocks per node on levels ``1 .. L-1`` (``L - 1`` entries).
        deep_supervision: return the list of ``L - 1`` logit maps instead of the final one.
        resampling: ``"d2d"`` or ``"original"`` (see above; one of :data:`DNANET_RESAMPLINGS`).

    Shapes: ``(B, C, H, W)`` to ``(B, 1, H, W)`` logits, or a list of ``L - 1`` of them.
    """

    def __init__(
        self,
        in_channels: int = 1,
        filters: Sequence[int] = (16, 32, 64, 128, 256),
        blocks: Sequence[int] = (2, 2, 2, 2),
        deep_supervision: bool = True,
        resampling: str = "d2d",
    ):
        super().__init__()
        filters = [int(f) for f in filters]
        blocks = [int(b) for b in blocks]
        L = len(filters)
        if L < 2 or len(blocks) != L - 1 or min(blocks) < 1:
            raise ValueError(
                f"need >= 2 filters and len(filters) - 1 block counts >= 1, got {filters}, {blocks}"
            )
        if resampling not in DNANET_RESAMPLINGS:
            raise ValueError(f"resampling must be one of {DNANET_RESAMPLINGS}, got {resampling!r}")
        self.in_channels = in_channels
        self.stride = 2 ** (L - 1)
        self.levels = L
        self.deep_supervision = bool(deep_supervision)
        self.resampling = resampling

        def n_blocks(i: int) -> int:
            return 1 if i == 0 else blocks[i - 1]

        self.nodes = nn.ModuleDict()
        for i in range(L):
            c_in = in_channels if i == 0 else filters[i - 1]
            self.nodes[f"{i}_0"] = _res_cbam_stage(c_in, filters[i], n_blocks(i))
        for j in range(1, L):
            for i in range(L - j):
                c_in = j * filters[i] + filters[i + 1] + (filters[i - 1] if i >= 1 else 0)
                self.nodes[f"{i}_{j}"] = _res_cbam_stage(c_in, filters[i], n_blocks(i))
        # FPFM: node X[L-1-k][k] -> filters[0] channels, k = 0 .. L-2.
        self.pyramid = nn.ModuleList([nn.Conv2d(filters[L - 1 - k], filters[0], 1) for k in range(L - 1)])
        self.fuse = ResCBAMBlock(L * filters[0], filters[0])
        self.head = LogitHead(filters[0])
        if self.deep_supervision:
            self.side_heads = nn.ModuleList([LogitHead(filters[0]) for _ in range(L - 2)])
        _init_weights(self)

    def _down(self, x: torch.Tensor, size) -> torch.Tensor:
        """The shallower node on its way into a deeper one: ``(B, C, 2h, 2w)`` to ``(B, C, h, w)``."""
        if self.resampling == "original":
            return _resize(x, size, align_corners=True)
        return F.max_pool2d(x, 2)

    def _forward(self, x: torch.Tensor) -> ModelOutput:
        L = self.levels
        corners = self.resampling == "original"
        X = [[None] * L for _ in range(L)]
        X[0][0] = self.nodes["0_0"](x)
        # Anti-diagonal order: X[k][0], then X[k-1][1], ..., X[0][k]; every input is ready.
        for k in range(1, L):
            X[k][0] = self.nodes[f"{k}_0"](F.max_pool2d(X[k - 1][0], 2))
            for j in range(1, k + 1):
                i = k - j
                size = X[i][0].shape[-2:]
                parts = X[i][:j] + [_resize(X[i + 1][j - 1], size, corners)]
                if i >= 1:
                    parts.append(self._down(X[i - 1][j], size))
                X[i][j] = self.nodes[f"{i}_{j}"](torch.cat(parts, dim=1))
        full = X[0][0].shape[-2:]
        pyramid = [_resize(conv(X[L - 1 - k][k]), full, corners) for k, conv in enumerate(self.pyramid)]
        final = self.head(self.fuse(torch.cat(pyramid + [X[0][L - 1]], dim=1)))
        if not self.deep_supervision:
            return final
        return [head(X[0][j + 1]) for j, head in enumerate(self.side_heads)] + [final]


# ----------------------------------------------------------------------------------------------
# ALCL-Net
# ----------------------------------------------------------------------------------------------


class ALCLNet(_SegmentationNet):
    """Attention-based local contrast learning network (Yu et al., "Pay attention to local
    contrast learning networks for infrared small target detection", IEEE GRSL 19, 2022).

    Structure:

    - Encoder "ResNet32": a stem of two 3x3 :class:`ConvBNReLU` at full resolution, then five
      stages of three residual blocks (2 + 5 x 3 x 2 = 32 convolution layers). Stage 1 keeps the
      resolution (:class:`ResidualBlock` x3); stages 2-5 start with a :class:`ResidualDownBlock`
      (max pool in the main path, stride-2 convolution in the shortcut) followed by two
      :class:`ResidualBlock`. Widths ``(16, 32, 64, 128, 256)``, strides 1, 2, 4, 8, 16.
    - Local contrast learning: a :class:`LocalContrast` module (radius 1: 1x1 centre convolution,
      3x3 surround convolution) on every stage output; the encoder's downsampling makes the
      contrast multi-scale (the surround of stage ``s`` lies ``2**(s-1)`` input pixels away).
    - Decoder: four :class:`SBAM` modules fuse the contrast maps from the deepest up (bilinear
      upsampling, 1x1 projection, attention gate from the shallower map, sum).
    - Head: ``conv1x1-ReLU`` and a :class:`LogitHead` on the full-resolution fused map.

    About 5.7 M parameters.

    Written from the paper (and its public description); differences: the output is logits
    (the paper ends in a sigmoid); the convolutions in front of batch norms have no bias; the
    heads start from the background prior (see the module docstring); inputs with ``in_channels``
    channels (the paper feeds three); optional deep supervision, not in the paper: with
    ``deep_supervision=True``, :class:`LogitHead` side outputs on the decoder maps at strides 8,
    4 and 2, bilinearly upsampled, followed by the final map (4 maps).

    Args:
        in_channels: input channels ``C``.
        deep_supervision: return 4 logit maps (3 side outputs, then the final one).
        widths: channels of the five encoder stages.

    Shapes: ``(B, C, H, W)`` to ``(B, 1, H, W)`` logits (inputs padded internally to a
    multiple of 16), or a list of 4 of them.
    """

    def __init__(
        self,
        in_channels: int = 1,
        deep_supervision: bool = False,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
    ):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2:
            raise ValueError(f"need >= 2 stage widths, got {widths}")
        self.in_channels = in_channels
        self.stride = 2 ** (len(widths) - 1)
        self.deep_supervision = bool(deep_supervision)
        self.stem = nn.Sequential(ConvBNReLU(in_channels, widths[0]), ConvBNReLU(widths[0], widths[0]))
        stages = [nn.Sequential(*[ResidualBlock(widths[0]) for _ in range(3)])]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            stages.append(nn.Sequential(ResidualDownBlock(c_in, c_out), ResidualBlock(c_out), ResidualBlock(c_out)))
        self.stages = nn.ModuleList(stages)
        self.contrast = nn.ModuleList([LocalContrast(c) for c in widths])
        # fusions[s] merges the decoder map of stage s + 1 into the contrast map of stage s.
        self.fusions = nn.ModuleList([SBAM(widths[s + 1], widths[s]) for s in range(len(widths) - 1)])
        self.head = nn.Sequential(nn.Conv2d(widths[0], widths[0], 1), nn.ReLU(inplace=True), LogitHead(widths[0]))
        if self.deep_supervision:
            # Side outputs on the decoder maps of stages 3, 2, 1 (strides 8, 4, 2 in the reference).
            n_side = min(3, len(widths) - 1)
            self.side_levels = list(range(n_side, 0, -1))
            self.side_heads = nn.ModuleList([LogitHead(widths[s]) for s in self.side_levels])
        _init_weights(self)

    def _forward(self, x: torch.Tensor) -> ModelOutput:
        full = x.shape[-2:]
        feats = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        contrast = [lcl(f) for lcl, f in zip(self.contrast, feats)]
        decoded = [None] * len(contrast)
        decoded[-1] = contrast[-1]
        for s in reversed(range(len(self.fusions))):
            decoded[s] = self.fusions[s](decoded[s + 1], contrast[s])
        final = self.head(decoded[0])
        if not self.deep_supervision:
            return final
        sides = [_resize(head(decoded[s]), full) for s, head in zip(self.side_levels, self.side_heads)]
        return sides + [final]


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

_REGISTRY = {"unet": UNet, "dnanet": DNANet, "alclnet": ALCLNet}

#: Names :func:`build_model` accepts (case-insensitive).
MODEL_NAMES = tuple(_REGISTRY)


def build_model(name: str, **kwargs) -> nn.Module:
    """The model called ``name`` (case-insensitive: ``"unet"``, ``"dnanet"``, ``"alclnet"``),
    built with ``**kwargs`` (its constructor's arguments).

    Raises:
        ValueError: for any other name (the message lists the valid ones).
    """
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    return _REGISTRY[key](**kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model`` (only those with ``requires_grad`` when
    ``trainable_only``); buffers (batch-norm statistics) are not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def final_logits(output: ModelOutput) -> torch.Tensor:
    """The final ``(B, 1, H, W)`` logits of a model output: the last element of a list/tuple
    (deep supervision), else the tensor itself."""
    if isinstance(output, (list, tuple)):
        if not output:
            raise ValueError("empty model output")
        return output[-1]
    return output


# ----------------------------------------------------------------------------------------------
# Checkpoints of BasicIRSTD / LESPS
# ----------------------------------------------------------------------------------------------

#: Architectures whose BasicIRSTD / LESPS checkpoints :func:`load_checkpoint` converts.
CHECKPOINT_MODELS = ("dnanet",)

# What their training code puts in front of the network's own names: LESPS' and BasicIRSTD's
# ``Net`` holds the network as ``self.model``; ``nn.DataParallel`` adds ``module.``.
_WRAPPER_PREFIXES = ("module.", "model.")

# Their ``Res_CBAM_block`` part -> ours in :class:`ResCBAMBlock`.
_BLOCK_PARTS = {
    "conv1": "body.0.0",
    "bn1": "body.0.1",
    "conv2": "body.1",
    "bn2": "body.2",
    "shortcut.0": "shortcut.0",
    "shortcut.1": "shortcut.1",
    "ca.fc1": "channel_att.mlp.0",
    "ca.fc2": "channel_att.mlp.2",
    "sa.conv1": "spatial_att.conv",
}
# A block's convolutions that have a bias there (ours have none) -> the batch norm right after.
_BIAS_INTO = {"conv1": "bn1", "conv2": "bn2", "shortcut.0": "shortcut.1"}


class ConvertedWeights(NamedTuple):
    """A foreign checkpoint in d2d's terms: ``build_model(model, **kwargs)`` then
    ``load_state_dict(state_dict)`` rebuilds it."""

    model: str  # d2d's model name (see :func:`build_model`)
    kwargs: dict  # its constructor arguments (plain ints, lists, bools and strings)
    state_dict: dict  # d2d's key names, conv biases folded into the batch norms


def _short_list(items, limit: int = 5) -> str:
    """At most ``limit`` items and how many there are in all: an error message stays one line
    even when a whole network's keys do not fit."""
    items = [str(i) for i in items]
    head = ", ".join(items[:limit])
    return head + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _one_line(text, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _numpy_globals() -> list:
    """The NumPy types a ``weights_only`` load must accept for LESPS checkpoints: they store
    lists of NumPy scalars (``train_iou_list``) beside the weights. Data only, no code."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    dtypes = {type(np.dtype(c)) for c in "?bBhHiIlLqQefdg"}
    # a file written under NumPy 1 names the scalar constructor by its old module
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


def _read_checkpoint(source) -> dict:
    """A state dict of tensors from a path or a mapping, unwrapped (``{'state_dict': ...}``,
    ``{'net': ...}``) and without the wrappers' key prefixes (``module.``, ``model.``)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            with torch.serialization.safe_globals(_numpy_globals()):
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors, truncated files, foreign formats
            cause = str(err).split("WeightsUnpickler error:", 1)[-1]
            raise ValueError(f"cannot load checkpoint {path}: not a PyTorch file of tensors and plain data, "
                             f"or a damaged one ({_one_line(cause)})") from err
        where = str(path)
    else:
        state, where = source, "the state dict"
    if not isinstance(state, Mapping):
        raise ValueError(f"{where}: expected a state dict (a mapping of names to tensors), got {type(state).__name__}")
    for wrapper in ("state_dict", "net"):
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{where} holds no tensors (top-level keys: {_short_list(state)})")
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def _dnanet_layout(sd: dict, where: str) -> dict:
    """The constructor arguments of the DNANet that ``sd`` (their key names) holds: levels and
    widths from the backbone column ``conv{i}_0``, deep supervision from ``final1`` vs ``final``."""
    levels = 0
    while f"conv{levels}_0.0.conv1.weight" in sd:
        levels += 1
    if levels < 2:
        raise ValueError(f"{where} is not a DNANet checkpoint of BasicIRSTD / LESPS: no backbone nodes "
                         f"conv0_0.0.conv1.weight, conv1_0.0.conv1.weight (its keys: {_short_list(sorted(sd))})")
    filters = [int(sd[f"conv{i}_0.0.conv1.weight"].shape[0]) for i in range(levels)]
    blocks = []
    for i in range(1, levels):
        indices = {int(m.group(1)) for k in sd for m in [re.match(rf"conv{i}_0\.(\d+)\.", k)] if m}
        blocks.append(max(indices) + 1)
    return {
        "in_channels": int(sd["conv0_0.0.conv1.weight"].shape[1]),
        "filters": filters,
        "blocks": blocks,
        "deep_supervision": "final.weight" not in sd,
    }


def _block_part(rest: str):
    """``'conv1.weight'`` -> ``('conv1', 'weight')``; ``None`` for a name no block has."""
    for part in _BLOCK_PARTS:
        if rest.startswith(part + "."):
            return part, rest[len(part) + 1:]
    return None


def _dnanet_name(key: str, levels: int):
    """Their key -> ``(our module prefix, their block part or None, parameter name)``, or
    ``None`` where nothing of ours corresponds."""
    m = re.fullmatch(r"conv(\d+)_(\d+)\.(\d+)\.(.+)", key)
    if m:
        i, j, k = int(m.group(1)), int(m.group(2)), m.group(3)
        split = _block_part(m.group(4))
        if split is None or i + j > levels - 1:
            return None
        return f"nodes.{i}_{j}.{k}", split[0], split[1]
    m = re.fullmatch(r"conv0_(\d+)_final\.0\.(.+)", key)
    if m:
        split = _block_part(m.group(2))
        if split is None or int(m.group(1)) != levels - 1:
            return None
        return "fuse", split[0], split[1]
    m = re.fullmatch(r"conv0_(\d+)_1x1\.(weight|bias)", key)
    if m:  # their projection of the level-m node is our pyramid entry L - 1 - m
        level = int(m.group(1))
        return (f"pyramid.{levels - 1 - level}", None, m.group(2)) if 1 <= level <= levels - 1 else None
    m = re.fullmatch(r"final(\d*)\.(weight|bias)", key)
    if m:
        n = int(m.group(1) or levels - 1)
        if not 1 <= n <= levels - 1:
            return None
        return ("head" if n == levels - 1 else f"side_heads.{n - 1}"), None, m.group(2)
    return None


def _convert_dnanet(sd: dict, levels: int) -> tuple:
    """``(state dict in our names, their keys without a counterpart)``; every conv bias in front
    of a batch norm is folded into that norm's running mean."""
    out, biases, unmapped = {}, {}, []
    for key, value in sd.items():
        target = _dnanet_name(key, levels)
        if target is None:
            unmapped.append(key)
            continue
        prefix, part, param = target
        if part in _BIAS_INTO and param == "bias":
            biases[f"{prefix}.{_BLOCK_PARTS[_BIAS_INTO[part]]}.running_mean"] = (key, value)
            continue
        name = f"{prefix}.{_BLOCK_PARTS[part]}.{param}" if part else f"{prefix}.{param}"
        out[name] = value
    for mean_key, (key, bias) in biases.items():
        if mean_key not in out:
            unmapped.append(key)  # a bias whose batch norm is not in the file
            continue
        if out[mean_key].shape != bias.shape:
            raise ValueError(f"{key} has shape {tuple(bias.shape)} but its batch norm's running mean "
                             f"{tuple(out[mean_key].shape)}")
        # in eval mode BN(conv(x) + b) = gamma * (conv(x) + b - mean) / sd + beta: the same norm
        # with mean - b after the bias-free convolution (in train mode the batch mean absorbs b)
        out[mean_key] = out[mean_key] - bias.to(out[mean_key].dtype)
    return out, unmapped


def _check_state(model: nn.Module, state: dict, unmapped: list, where: str) -> None:
    """Raise one short ``ValueError`` listing what does not fit: keys of the file we cannot place,
    our keys it lacks, and tensors of the wrong shape."""
    ours = model.state_dict()
    problems = []
    extra = unmapped + sorted(set(state) - set(ours))
    if extra:
        problems.append(f"{len(extra)} keys without a counterpart in d2d's {type(model).__name__}: {_short_list(extra)}")
    missing = sorted(set(ours) - set(state))
    if missing:
        problems.append(f"{len(missing)} of its keys missing: {_short_list(missing)}")
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(ours[k].shape)}"
              for k in sorted(set(state) & set(ours)) if state[k].shape != ours[k].shape]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (file vs model): {_short_list(shapes, 3)}")
    if problems:
        raise ValueError(f"{where} does not fit: " + "; ".join(problems))


def convert_checkpoint(source, model: str = "dnanet", **model_kwargs) -> ConvertedWeights:
    """A BasicIRSTD / LESPS checkpoint in d2d's terms (see :func:`load_checkpoint`)."""
    key = str(model).strip().lower()
    if key not in CHECKPOINT_MODELS:
        raise ValueError(f"cannot convert {model!r} checkpoints; valid models: {', '.join(CHECKPOINT_MODELS)}")
    where = str(source) if isinstance(source, (str, os.PathLike)) else "the state dict"
    sd = _read_checkpoint(source)
    kwargs = {**_dnanet_layout(sd, where), "resampling": "original", **model_kwargs}
    net = build_model(key, **kwargs)
    state, unmapped = _convert_dnanet(sd, net.levels)
    _check_state(net, state, unmapped, where)
    return ConvertedWeights(key, kwargs, state)


def load_checkpoint(source, model: str = "dnanet", **model_kwargs) -> nn.Module:
    """d2d's model with the weights of a BasicIRSTD / LESPS checkpoint, in eval mode.

    Args:
        source: a path to their ``.pth`` / ``.pth.tar`` file (read with ``weights_only=True``:
            tensors and plain data, never code), or a state dict. The weights may be wrapped
            (``{'state_dict': ...}`` as their training scripts save, or ``{'net': ...}``) and their
            names may carry the prefixes ``model.`` (their ``Net`` wrapper) and ``module.``
            (``nn.DataParallel``).
        model: the architecture (one of :data:`CHECKPOINT_MODELS`; so far their ``DNANet``).
        **model_kwargs: constructor arguments of d2d's model. By default they are read from the
            weights (input channels, widths ``nb_filter``, blocks per level ``num_blocks``, deep
            supervision from ``final1..final4`` vs ``final``) with ``resampling="original"``,
            which gives their outputs; a value given here wins (a conflicting one is reported as
            a mismatch).

    Key names: their ``conv{i}_{j}`` stages become ``nodes["{i}_{j}"]``, ``conv0_4_final.0`` is
    ``fuse``, ``conv0_{m}_1x1`` is ``pyramid[4 - m]``, ``final1..final3`` are ``side_heads`` and
    ``final4`` (or ``final``) is ``head``; inside a ``Res_CBAM_block``, ``conv1/bn1/conv2/bn2``
    are ``body``, ``ca.fc1/ca.fc2`` ``channel_att.mlp``, ``sa.conv1`` ``spatial_att.conv``. Their
    convolutions in front of a batch norm have biases and ours do not: each bias ``b`` is folded
    into the norm as ``running_mean - b``, which gives the same eval-mode output (and the same
    train-mode output, where the batch mean absorbs ``b``).

    What then still differs from their network: the output is logits (theirs ends in a
    sigmoid: ``model.predict(x)`` gives their probabilities); deep supervision returns all four maps
    in train and eval mode alike (theirs only the last one outside ``mode='train'``); inputs
    whose sides are not multiples of 16 are padded by edge replication inside the model, where
    their test loaders zero-pad the normalised image to multiples of 32 first (pad the input the
    same way to get their numbers for such sizes).

    The model takes the floating-point dtype of the file's weights and sits on the CPU.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ValueError: an unreadable file, a file without tensors, an unknown ``model``, or weights
            that do not fit; the message names the file and lists (a few of) the keys of theirs
            we cannot place, ours they lack, and the tensors of the wrong shape.
    """
    converted = convert_checkpoint(source, model, **model_kwargs)
    net = build_model(converted.model, **converted.kwargs)
    # load_state_dict copies into the model's dtype: build it in the file's, so nothing is rounded
    net.to(converted.state_dict["nodes.0_0.0.body.0.0.weight"].dtype)
    net.load_state_dict(converted.state_dict)
    return net.eval()
