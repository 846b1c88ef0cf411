"""ResNet-18, CIFAR variant: 3x3 stem, no max-pool."""
import torch.nn.functional as F
from torch import nn

from .common import ACTIVATION, WIDTH, Normalize, activation_factory


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride, act):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = act()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = act()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet18(nn.Module):
    """``width``: channels of the first stage (64 in the paper; the stages have width,
    2, 4 and 8 times it), to shrink the network for CPU-sized experiments."""

    param_schema = {"activation": ACTIVATION, "width": WIDTH}

    def __init__(self, num_classes=10, in_channels=3, mean=(0.0,), std=(1.0,), activation="relu",
                 input_size=32, width=64):  # input_size unused: the network is size-agnostic
        super().__init__()
        act = activation_factory(activation)
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act = act()
        layers, in_planes = [], width
        for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
            layers.append(nn.Sequential(BasicBlock(in_planes, planes, stride, act),
                                        BasicBlock(planes, planes, 1, act)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(8 * width, num_classes)

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
