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

Helpers: :func:`build_model` (by name), :func:`count_parameters`, :func:`final_logits`.
"""

from __future__ import annotations

from typing import List, Sequence, Union

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
    "build_model",
    "count_parameters",
    "final_logits",
]

#: Initial bias of every output head: the logit of a ~1.8 % foreground prior.
PRIOR_BIAS = -4.0

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


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of ``(B, C, h, w)`` to ``(B, C, *size)`` (a no-op at the same size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


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
    of batch norms have no bias (a few thousand parameters fewer); bilinear resizes use
    ``align_corners=False`` and resize to the exact target size (so odd intermediate sizes also
    work); all convolutions are Kaiming-initialised and the heads start from the background prior
    (see the module docstring) instead of PyTorch's default initialisation; the output is logits
    (the paper thresholds the sigmoid); the eight-connected clustering post-processing that turns
    the map into target centroids is not part of the network.

    Args:
        in_channels: input channels ``C``.
        filters: channels per level (``L >= 2`` levels; inputs padded to a multiple of
            ``2 ** (L - 1)``).
        blocks: ResCBAM blocks per node on levels ``1 .. L-1`` (``L - 1`` entries).
        deep_supervision: return the list of ``L - 1`` logit maps instead of the final one.

    Shapes: ``(B, C, H, W)`` to ``(B, 1, H, W)`` logits, or a list of ``L - 1`` of them.
    """

    def __init__(
        self,
        in_channels: int = 1,
        filters: Sequence[int] = (16, 32, 64, 128, 256),
        blocks: Sequence[int] = (2, 2, 2, 2),
        deep_supervision: bool = True,
    ):
        super().__init__()
        filters = [int(f) for f in filters]
        blocks = [int(b) for b in blocks]
        L = len(filters)
        if L < 2 or len(blocks) != L - 1 or min(blocks) < 1:
            raise ValueError(
                f"need >= 2 filters and len(filters) - 1 block counts >= 1, got {filters}, {blocks}"
            )
        self.in_channels = in_channels
        self.stride = 2 ** (L - 1)
        self.levels = L
        self.deep_supervision = bool(deep_supervision)

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

    def _forward(self, x: torch.Tensor) -> ModelOutput:
        L = self.levels
        X = [[None] * L for _ in range(L)]
        X[0][0] = self.nodes["0_0"](x)
        # Anti-diagonal order: X[k][0], then X[k-1][1], ..., X[0][k]; every input is ready.
        for k in range(1, L):
            X[k][0] = self.nodes[f"{k}_0"](F.max_pool2d(X[k - 1][0], 2))
            for j in range(1, k + 1):
                i = k - j
                size = X[i][0].shape[-2:]
                parts = X[i][:j] + [_resize(X[i + 1][j - 1], size)]
                if i >= 1:
                    parts.append(F.max_pool2d(X[i - 1][j], 2))
                X[i][j] = self.nodes[f"{i}_{j}"](torch.cat(parts, dim=1))
        full = X[0][0].shape[-2:]
        pyramid = [_resize(conv(X[L - 1 - k][k]), full) for k, conv in enumerate(self.pyramid)]
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
