"""The seed study's MNIST network (the Keras ``mnist_cnn`` example)."""
from torch import nn

from .common import ACTIVATION, Normalize, activation_factory


class MnistCNN(nn.Module):
    """conv 32 → conv 64 → max-pool → dropout 0.25 → fc 128 → dropout 0.5 → fc classes."""

    param_schema = {"activation": ACTIVATION}

    def __init__(self, num_classes=10, in_channels=1, mean=(0.1307,), std=(0.3081,),
                 activation="relu", input_size=28):
        super().__init__()
        act = activation_factory(activation)
        side = (input_size - 4) // 2
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), act(),
            nn.Conv2d(32, 64, 3), act(),
            nn.MaxPool2d(2), nn.Dropout(0.25),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side * side, 128), act(),
            nn.Dropout(0.5), nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(self.normalize(x)))
