"""WideResNet (Zagoruyko & Komodakis), depth 34 and widen factor 10 by default, as in
Madry et al. and TRADES."""
import torch.nn.functional as F
from torch import nn

from ..errors import AdvplugError
from ..params import integer, number
from .common import ACTIVATION, Normalize, activation_factory
from .preact_resnet import PreActBlock


class WideResNet(nn.Module):
    param_schema = {"activation": ACTIVATION, "depth": integer(34, low=10, help="layers: 6n + 4"),
                    "widen_factor": integer(10, low=1, help="channel multiplier k"),
                    "drop_rate": number(0.0, 0, 1, high_open=True, help="dropout inside the blocks")}

    def __init__(self, num_classes=10, in_channels=3, mean=(0.0,), std=(1.0,), activation="relu",
                 depth=34, widen_factor=10, drop_rate=0.0, input_size=32):  # input_size unused
        super().__init__()
        if (depth - 4) % 6:
            raise AdvplugError(f"WideResNet depth must be 6n+4 (e.g. 16, 28, 34), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        act = activation_factory(activation)
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        groups, in_planes = [], widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            blocks = [PreActBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1,
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
