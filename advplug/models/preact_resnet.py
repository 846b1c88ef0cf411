"""PreAct ResNet-18 (He et al. 2016), the fast-adversarial-training workhorse."""
import torch.nn.functional as F
from torch import nn

from .common import ACTIVATION, WIDTH, Normalize, activation_factory


class PreActBlock(nn.Module):
    """BN-act-conv twice with an identity (or 1x1 conv) shortcut; also WideResNet's block."""

    def __init__(self, in_planes, planes, stride, act, drop_rate=0.0):
        super().__init__()
        self.drop_rate = drop_rate
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = act()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = act()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = self.act1(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.act2(self.bn2(self.conv1(out)))
        if self.drop_rate:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + shortcut


class PreActResNet18(nn.Module):
    """``width``: channels of the first stage (64 in the paper; the stages have width,
    2, 4 and 8 times it), to shrink the network for CPU-sized experiments."""

    param_schema = {"activation": ACTIVATION, "width": WIDTH}

    def __init__(self, num_classes=10, in_channels=3, mean=(0.0,), std=(1.0,), activation="relu",
                 input_size=32, width=64):  # input_size unused: the network is size-agnostic
        super().__init__()
        act = activation_factory(activation)
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        layers, in_planes = [], width
        for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
            layers.append(nn.Sequential(PreActBlock(in_planes, planes, stride, act),
                                        PreActBlock(planes, planes, 1, act)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(8 * width)
        self.act = act()
        self.linear = nn.Linear(8 * width, num_classes)

    def forward(self, x):
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.act(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
