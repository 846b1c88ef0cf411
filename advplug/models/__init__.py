"""Built-in architectures. All take [0, 1] inputs and normalize inside."""
from .common import ACTIVATIONS, Normalize, activation_factory
from .mnist_cnn import MnistCNN
from .preact_resnet import PreActResNet18
from .resnet import ResNet18
from .wideresnet import WideResNet

BUILTIN_MODELS = {
    "mnist-cnn": (MnistCNN, "seed study's MNIST CNN: conv32-conv64-pool-fc128"),
    "preact-resnet18": (PreActResNet18, "PreAct ResNet-18"),
    "resnet18": (ResNet18, "ResNet-18, CIFAR variant (3x3 stem, no max-pool)"),
    "wrn-34-10": (WideResNet, "WideResNet-34-10"),
}

__all__ = ["ACTIVATIONS", "BUILTIN_MODELS", "Normalize", "activation_factory",
           "MnistCNN", "PreActResNet18", "ResNet18", "WideResNet"]
