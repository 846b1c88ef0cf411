"""WideResNet (Zagoruyko & Komodakis), depth 34 and widen factor 10 by default, as in
Madry et al. and TRADES."""
import torch.nn.functional as F
from torch import nn

from .common import Normalize, activation_factory


class WideBlock(nn.Module):
    def __init__(self, in_planes, planes, stride, act, drop_rate=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = act()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = act()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut = None
        if in_planes != planes or stride != 1:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = self.act1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.act2(self.bn2(out))
        if self.drop_rate:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, mean=(0.0,), std=(1.0,), activation="relu",
                 depth=34, widen_factor=10, drop_rate=0.0, input_size=32):  # input_size unused
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        act = activation_factory(activation)
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        groups, in_planes = [], widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            blocks = [WideBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1,
                                act, drop_rate) for i in range(n)]
            groups.append(nn.Sequential(*blocks))
            in_planes = planes
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(widths[3])
        self.act = act()
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.act(self.bn(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
