"""The GPU fast path's switches, checked where they run here (CPU): ``--compile``."""
import pytest
import torch

import advplug
from conftest import tiny_config


@pytest.mark.slow
def test_compiled_training_trains_the_same_model_and_saves_the_plain_module(tmp_path, data_root):
    """torch.compile (inductor, CPU) of the model the trainer's passes use: the same weights
    as eager training up to kernel rounding, and files that load without torch.compile."""
    common = dict(trainer="fgsm-rs", model="wong2020-mnist", train_subset=256, monitor_size=0, eval_steps=0,
                  test_subset=32, optimizer="adam", lr=1e-3, weight_decay=0.0)
    eager = advplug.train(tiny_config(tmp_path / "eager", data_root, **common))
    compiled = advplug.train(tiny_config(tmp_path / "compiled", data_root, compile=True, **common))
    assert compiled.trainer.model is not compiled.model  # the trainer runs the compiled module
    a = torch.load(tmp_path / "eager" / "run" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "compiled" / "run" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()  # no "_orig_mod." prefixes: the plain module was saved
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    assert compiled.final_eval["clean_acc"] == pytest.approx(eager.final_eval["clean_acc"], abs=7)


def test_an_update_inside_an_autocast_region_is_seen_by_the_next_forward_pass():
    """Free-AT updates the model several times inside one training step, i.e. inside one
    autocast region (--amp), where autocast keeps its low-precision copies of the weights:
    Run.optimizer_step drops them, so the next replay sees the updated weights."""
    from types import SimpleNamespace

    from advplug.distributed import SINGLE
    from advplug.engine import Run

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    run = SimpleNamespace(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0), dist=SINGLE,
                          batch_share=1.0, lr_scheduler=None)
    x = torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(x)
        Run.optimizer_step(run, before.float().sum())
        after = model(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fresh = model(x)  # a new region: the weights as they are now
    assert not torch.equal(after, before)
    assert torch.equal(after, fresh)
