"""A model defined outside advplug, as your own code would define it: used in the README as
``advplug eval --model-factory examples.my_models:mnist_net --weights W.pt --normalize 0.1307/0.3081``.

Like many models in the wild it expects *normalized* inputs; ``--normalize`` puts the
normalization inside, so advplug attacks it in [0, 1] pixel space like every other model.

Run as a script, it writes a plain state_dict from an advplug model file, to try it with:
``python examples/my_models.py runs/pgd/model.pt runs/pgd-plain.pt``.
"""
import sys

import torch
from torch import nn


def mnist_net() -> nn.Module:
    """advplug's mnist-cnn layers without their normalization layer."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(), nn.Linear(64 * 12 * 12, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))


def export_plain_state_dict(model_file: str, out: str) -> None:
    """The weights of an advplug mnist-cnn model file as mnist_net()'s plain state_dict."""
    saved = torch.load(model_file, map_location="cpu", weights_only=True)["state_dict"]
    layers = [v for k, v in saved.items() if not k.startswith("normalize.")]
    names = list(mnist_net().state_dict())
    torch.save(dict(zip(names, layers)), out)
    print(f"written: {out} (a plain state_dict for examples.my_models:mnist_net)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python examples/my_models.py ADVPLUG_MODEL.pt OUT.pt")
    export_plain_state_dict(sys.argv[1], sys.argv[2])
