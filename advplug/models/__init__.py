"""Built-in architectures. All take [0, 1] inputs; all normalize inside except the papers' MNIST
networks (wong2020-mnist, madry2018-mnist), which like the papers use raw pixels."""
from .common import ACTIVATIONS, Normalize, activation_factory
from .mnist_cnn import MnistCNN
from .paper_mnist import MadryMnistNet, WongMnistNet
from .preact_resnet import PreActResNet18
from .resnet import ResNet18
from .wideresnet import WideResNet

BUILTIN_MODELS = {
    "mnist-cnn": (MnistCNN, "seed study's MNIST CNN: conv32-conv64-pool-fc128"),
    "wong2020-mnist": (WongMnistNet, "Wong et al. 2020's MNIST net: conv16-conv32 (4x4, stride 2)-fc100, no normalization"),
    "madry2018-mnist": (MadryMnistNet, "Madry et al. 2018's MNIST net: conv32-pool-conv64-pool-fc1024, no normalization"),
    "preact-resnet18": (PreActResNet18, "PreAct ResNet-18"),
    "resnet18": (ResNet18, "ResNet-18, CIFAR variant (3x3 stem, no max-pool)"),
    "wrn-34-10": (WideResNet, "WideResNet-34-10"),
}

__all__ = ["ACTIVATIONS", "BUILTIN_MODELS", "Normalize", "activation_factory",
           "MnistCNN", "MadryMnistNet", "WongMnistNet", "PreActResNet18", "ResNet18", "WideResNet"]
