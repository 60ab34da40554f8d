"""A network with the parameter names and shapes of BasicIRSTD's / LESPS' DNANet, for the tests
of checkpoint conversion (written here from their published structure, not copied).

Their model/DNANet/model_DNANet.py: stages ``conv{i}_{j}`` of ``Res_CBAM_block`` (``conv1``,
``bn1``, ``conv2``, ``bn2``, ``shortcut`` = [1x1 conv, BN] where the width changes, ``ca.fc1``,
``ca.fc2``, ``sa.conv1``; the 3x3 and shortcut convolutions have biases), ``conv0_4_final``, the
projections ``conv0_{1..4}_1x1``, and the heads ``final1..final4`` (deep supervision) or
``final``; their training wrapper ``Net`` holds it as ``self.model``. The forward follows theirs
step by step: bilinear resizes by scale factors with ``align_corners=True``, the shallower node
resized by 0.5.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class TheirBlock(nn.Module):
    """Their ``Res_CBAM_block``."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out)) if c_in != c_out else None
        self.ca = nn.Module()
        self.ca.fc1 = nn.Conv2d(c_out, c_out // 16, 1, bias=False)
        self.ca.fc2 = nn.Conv2d(c_out // 16, c_out, 1, bias=False)
        self.sa = nn.Module()
        self.sa.conv1 = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

        def mlp(v):
            return self.ca.fc2(F.relu(self.ca.fc1(v)))

        out = out * torch.sigmoid(mlp(F.adaptive_avg_pool2d(out, 1)) + mlp(F.adaptive_max_pool2d(out, 1)))
        pooled = torch.cat([out.mean(1, keepdim=True), out.amax(1, keepdim=True)], 1)
        out = out * torch.sigmoid(self.sa.conv1(pooled))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class TheirDNANet(nn.Module):
    """Their ``DNANet`` (5 levels, as theirs is written)."""

    def __init__(self, nb=(16, 32, 64, 128, 256), num_blocks=(2, 2, 2, 2), deep_supervision=True):
        super().__init__()

        def stage(c_in, c_out, n=1):
            return nn.Sequential(TheirBlock(c_in, c_out), *[TheirBlock(c_out, c_out) for _ in range(n - 1)])

        self.conv0_0 = stage(1, nb[0])
        for i in range(1, 5):
            setattr(self, f"conv{i}_0", stage(nb[i - 1], nb[i], num_blocks[i - 1]))
        for j in range(1, 5):
            for i in range(5 - j):
                c_in = j * nb[i] + nb[i + 1] + (nb[i - 1] if i else 0)
                setattr(self, f"conv{i}_{j}", stage(c_in, nb[i], num_blocks[i - 1] if i else 1))
        self.conv0_4_final = stage(5 * nb[0], nb[0])
        for m in range(1, 5):
            setattr(self, f"conv0_{m}_1x1", nn.Conv2d(nb[m], nb[0], 1))
        self.deep_supervision = deep_supervision
        names = ["final1", "final2", "final3", "final4"] if deep_supervision else ["final"]
        for name in names:
            setattr(self, name, nn.Conv2d(nb[0], 1, 1))
        self.pool = nn.MaxPool2d(2, 2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.down = nn.Upsample(scale_factor=0.5, mode="bilinear", align_corners=True)
        self.up_4 = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=True)
        self.up_8 = nn.Upsample(scale_factor=8, mode="bilinear", align_corners=True)
        self.up_16 = nn.Upsample(scale_factor=16, mode="bilinear", align_corners=True)

    def forward(self, x):
        """All outputs as probabilities (theirs return them in mode='train')."""
        cat = torch.cat
        x0_0 = self.conv0_0(x)
        x1_0 = self.conv1_0(self.pool(x0_0))
        x0_1 = self.conv0_1(cat([x0_0, self.up(x1_0)], 1))
        x2_0 = self.conv2_0(self.pool(x1_0))
        x1_1 = self.conv1_1(cat([x1_0, self.up(x2_0), self.down(x0_1)], 1))
        x0_2 = self.conv0_2(cat([x0_0, x0_1, self.up(x1_1)], 1))
        x3_0 = self.conv3_0(self.pool(x2_0))
        x2_1 = self.conv2_1(cat([x2_0, self.up(x3_0), self.down(x1_1)], 1))
        x1_2 = self.conv1_2(cat([x1_0, x1_1, self.up(x2_1), self.down(x0_2)], 1))
        x0_3 = self.conv0_3(cat([x0_0, x0_1, x0_2, self.up(x1_2)], 1))
        x4_0 = self.conv4_0(self.pool(x3_0))
        x3_1 = self.conv3_1(cat([x3_0, self.up(x4_0), self.down(x2_1)], 1))
        x2_2 = self.conv2_2(cat([x2_0, x2_1, self.up(x3_1), self.down(x1_2)], 1))
        x1_3 = self.conv1_3(cat([x1_0, x1_1, x1_2, self.up(x2_2), self.down(x0_3)], 1))
        x0_4 = self.conv0_4(cat([x0_0, x0_1, x0_2, x0_3, self.up(x1_3)], 1))
        fused = self.conv0_4_final(cat([self.up_16(self.conv0_4_1x1(x4_0)), self.up_8(self.conv0_3_1x1(x3_1)),
                                        self.up_4(self.conv0_2_1x1(x2_2)), self.up(self.conv0_1_1x1(x1_3)), x0_4], 1))
        if not self.deep_supervision:
            return [torch.sigmoid(self.final(fused))]
        heads = [self.final1(x0_1), self.final2(x0_2), self.final3(x0_3), self.final4(fused)]
        return [torch.sigmoid(h) for h in heads]


class TheirNet(nn.Module):
    """Their training wrapper: the network sits in ``self.model`` (keys ``model.conv0_0...``)."""

    def __init__(self, **kwargs):
        super().__init__()
        self.model = TheirDNANet(**kwargs)


def their_net(seed=0, **kwargs):
    """Random float64 weights everywhere, nonzero conv biases and batch-norm statistics."""
    g = torch.Generator().manual_seed(seed)
    net = TheirNet(**kwargs).double()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif "bn" in name or "shortcut.1" in name:  # batch-norm scale near 1
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            else:  # fan-in scaled, so 15 stages keep activations of order 1
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (1.5 / fan_in) ** 0.5)
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn(b.shape, generator=g, dtype=b.dtype))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
    return net.eval()
