"""The advplug-sat plugin (plugins/advplug-sat): the ``smooth-activation`` transform finds
every ReLU (modules, functional calls through torch.fx, a clear error where neither
works), ``mode=forward`` leaves none, ``mode=backward`` keeps ReLU's output and swaps its
gradient, the attacker's and the optimizer's gradient switches do what they say, and
transformed models train, save, load and evaluate like any other."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

advplug_sat = pytest.importorskip("advplug_sat", reason="advplug-sat is not installed "
                                  "(pip install --no-deps -e plugins/advplug-sat)")

import advplug  # noqa: E402
from advplug import cli  # noqa: E402
from advplug.attacks.base import eval_frozen  # noqa: E402
from advplug.errors import AdvplugError  # noqa: E402
from advplug.host import Host  # noqa: E402
from advplug.monitor import pgd_attack  # noqa: E402
from advplug.threat import Threat  # noqa: E402
from advplug.trainers.base import input_gradient, perturbation  # noqa: E402
from advplug.trainers.pgd_at import PGDTrainer  # noqa: E402
from advplug_sat import FUNCTIONS, ReLUSmoothBackward, SmoothReLU, derivative, gradient_role  # noqa: E402
from advplug_sat import smooth_activation, smooth_module  # noqa: E402
from advplug_sat.transform import TracedForward  # noqa: E402
from conftest import mnist_images, tiny_config  # noqa: E402

THREAT = Threat("Linf", 0.3)


@pytest.fixture(scope="module")
def mnist(data_root):
    """32 MNIST training images in [0, 1]."""
    return mnist_images(data_root, 32)


def mnist_cnn(**kwargs):
    """advplug's own mnist-cnn, built through the registry (ReLU through its activation argument)."""
    factory = advplug.registry().get("models", "mnist-cnn")
    return factory(num_classes=10, in_channels=1, mean=[0.1307], std=[0.3081], input_size=28, **kwargs)


def relu_calls(model, *args):
    """How many relu calls (F.relu, torch.relu, Tensor.relu, in place or not) one forward makes."""
    class Count(TorchFunctionMode):
        n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Count.n += getattr(func, "__name__", None) in ("relu", "relu_")
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Count():
        model(*args)
    return Count.n


def rewritten(module):
    """The fx-rewritten forward installed on ``module``, or None."""
    forward = module.__dict__.get("forward")
    return forward if isinstance(forward, TracedForward) else None


def assert_no_relu(model):
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    for forward in filter(None, map(rewritten, model.modules())):
        if forward.graph is None:  # a copy: traced again on first use
            forward(torch.zeros(1, 1, 28, 28))
        for node in forward.graph.nodes:
            assert not (node.op in ("call_function", "call_method")
                        and getattr(node.target, "__name__", node.target) in ("relu", "relu_")), node.format_node()


class FunctionalNet(nn.Module):
    """ReLU only through functional calls, one of them in place with its result unused."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=3)
        self.fc1 = nn.Linear(4 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 10)
        self.spare = nn.Linear(3, 3)  # never used by forward: fx would drop it
        self.num_classes = 10

    def forward(self, x):
        h = F.relu(self.conv(x))
        h = torch.relu(h.flatten(1))
        h = self.fc1(h)
        F.relu(h, inplace=True)  # only its side effect counts
        return self.fc2(h.relu())


def functional_net_with(act, m, x):
    """FunctionalNet's forward with ``act`` at each of its four ReLUs."""
    h = act(m.conv(x))
    h = act(h.flatten(1))
    h = act(m.fc1(h))
    return m.fc2(act(h))


class Untraceable(nn.Module):
    """Data-dependent control flow (fx cannot trace it) and a functional ReLU."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        x = x.flatten(1)
        if x.sum() > 0:
            x = x * 2
        return F.relu(self.fc(x))


class UntraceableModules(nn.Module):
    """Untraceable, but its ReLU is an nn.ReLU module in a traceable child with one more
    functional ReLU: both are replaced."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU())
        self.head = FunctionalHead()

    def forward(self, x):
        h = self.body(x)
        if h.sum() > 0:
            h = h * 1.0
        return self.head(h)


class FunctionalHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 10)

    def forward(self, h):
        return self.fc(F.relu(h))


def _relu_in_helper(x):
    return F.relu(x)


class HelperRelu(nn.Module):
    """Untraceable, and its ReLU hides in a helper function the class source does not show."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)
        self.act = nn.ReLU()

    def forward(self, x):
        h = self.act(self.fc(x.flatten(1)))
        if h.sum() > 0:
            h = _relu_in_helper(h)
        return h


def test_plugin_is_discovered_through_its_entry_point():
    assert "smooth-activation" in advplug.registry().names("model_transforms")
    assert advplug.registry().get("model_transforms", "smooth-activation") is smooth_activation
    rows = {row["name"]: row for row in Host().describe()}
    assert rows["sat"]["source"] == "entry point advplug_sat.plugin"
    assert rows["sat"]["registered"] == {"model_transforms": ["smooth-activation"]}
    assert rows["sat"]["version"] == advplug_sat.__version__ and not rows["sat"]["errors"]


@pytest.mark.parametrize("fn", list(FUNCTIONS))
def test_closed_form_derivatives_match_autograd(fn):
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    x = x[x != 0].requires_grad_(True)  # ELU/CELU (α ≠ 1) have a kink at 0
    options = dict(FUNCTIONS[fn], **({"alpha": 0.5} if fn in ("elu", "celu") else {}))
    (grad,) = torch.autograd.grad(smooth_module(fn, options).double()(x).sum(), x)
    expected = derivative(fn, x.detach(), {k: v for k, v in options.items() if k != "learnable"})
    assert torch.allclose(grad, expected, atol=1e-8, rtol=0)


@pytest.mark.parametrize("fn", list(FUNCTIONS))
def test_forward_mode_leaves_no_relu_in_advplug_models(fn, mnist):
    x = mnist[0][:4]
    model = smooth_activation(mnist_cnn(), fn=fn).eval()
    assert_no_relu(model)
    assert sum(isinstance(m, type(smooth_module(fn, FUNCTIONS[fn]))) for m in model.modules()) == 3
    assert type(model).__name__ == "MnistCNN"  # swapped in place, nothing traced
    assert set(model.state_dict()) == set(mnist_cnn().state_dict()) | (
        {"features.1.alpha_root", "features.3.alpha_root", "classifier.2.alpha_root"} if fn == "smooth-relu" else set())
    if fn != "smooth-relu":  # SmoothReLU is ReLU(x - log(1 + α|x|)/α) by definition
        assert relu_calls(model, x) == 0
    assert model(x).shape == (4, 10)


def test_options_are_checked():
    for options, needle in [({"fn": "tanh"}, "fn must be one of softplus, gelu"), ({"mode": "both"}, "mode must be one of forward, backward"),
                            ({"attack_grad": "relu"}, "needs mode=backward"),
                            ({"mode": "backward", "train_grad": "soft"}, "train_grad must be one of smooth, relu"),
                            ({"fn": "gelu", "beta": 5}, "fn=gelu has no parameter 'beta'"),
                            ({"beta": -1}, "beta must be a number > 0"),
                            ({"fn": "smooth-relu", "learnable": 3}, "learnable must be true or false")]:
        with pytest.raises(AdvplugError, match=needle):
            smooth_activation(mnist_cnn(), **options)
    with pytest.raises(AdvplugError, match="found no ReLU"):
        smooth_activation(mnist_cnn(activation="gelu"))
    with pytest.raises(AdvplugError, match="found no ReLU"):  # the transform given twice
        smooth_activation(smooth_activation(mnist_cnn()))
    assert isinstance(smooth_activation(mnist_cnn(), fn="swish").features[1], nn.SiLU)


def test_backward_mode_outputs_relu_exactly_and_its_gradient_is_sigmoid_beta_x(mnist):
    x = mnist[0][:8]
    relu_model = mnist_cnn().eval()
    model = smooth_activation(copy.deepcopy(relu_model), fn="softplus", mode="backward").eval()
    assert torch.equal(model(x), relu_model(x))
    # one activation: ∂/∂x of sum ReLU(x) with the smooth backward is σ(βx), β = 10 by default
    act = model.features[1]
    assert isinstance(act, ReLUSmoothBackward) and act.options == {"beta": 10.0}
    z = torch.randn(1000, requires_grad=True)
    out = act(z)
    assert torch.equal(out, torch.relu(z))
    (grad,) = torch.autograd.grad(out.sum(), z)
    assert torch.equal(grad, torch.sigmoid(10 * z.detach()))
    # a network: its input gradient is the ReLU network's Jacobian with σ(βx) for ReLU's step
    mlp = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    t = smooth_activation(copy.deepcopy(mlp), fn="softplus", beta=3, mode="backward")
    v = torch.randn(5, 6, requires_grad=True)
    (g,) = torch.autograd.grad(t(v).sum(), v)
    pre = mlp[0](v.detach())
    expected = (torch.sigmoid(3 * pre) * mlp[2].weight) @ mlp[0].weight
    assert torch.allclose(g, expected, atol=1e-6)
    assert torch.equal(t(v), mlp(v))


def test_backward_mode_double_backprop_runs_through_the_smooth_derivative():
    """GradAlign-style: the input gradient, taken with create_graph, differentiates again
    (with ReLU's step it would be zero in the activation's input)."""
    mlp = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    t = smooth_activation(mlp, fn="softplus", mode="backward")
    v = torch.randn(5, 6, requires_grad=True)
    (g,) = torch.autograd.grad(t(v).sum(), v, create_graph=True)
    g.pow(2).sum().backward()
    assert mlp[0].bias.grad is not None and mlp[0].bias.grad.abs().sum() > 0


def _cell(base, attack_grad, train_grad):
    return smooth_activation(copy.deepcopy(base), fn="softplus", mode="backward",
                             attack_grad=attack_grad, train_grad=train_grad).eval()


def test_attack_and_train_gradient_switches_give_the_four_cells(mnist):
    """Each of the 2x2 cells against references that use one gradient everywhere: the
    attacker's δ (advplug's inner maximization, through input_gradient) follows
    attack_grad, the optimizer's parameter gradient at x + δ follows train_grad."""
    x, y = mnist[0][:16], mnist[1][:16]
    base = mnist_cnn().eval()
    uniform = {g: _cell(base, g, g) for g in ("smooth", "relu")}
    for g in ("smooth", "relu"):  # the references differ, else the test would prove nothing
        assert not torch.equal(input_gradient(uniform["smooth"], x, y, torch.zeros_like(x)),
                               input_gradient(uniform["relu"], x, y, torch.zeros_like(x)))
    # ReLU everywhere in backward mode is the untransformed model, exactly
    assert torch.equal(input_gradient(uniform["relu"], x, y, torch.zeros_like(x)),
                       input_gradient(base, x, y, torch.zeros_like(x)))
    deltas, reference_grads = {}, {}
    for attack_grad in ("smooth", "relu"):
        torch.manual_seed(1)
        deltas[attack_grad] = perturbation(uniform[attack_grad], x, y, THREAT, 2, 0.1)
    assert not torch.equal(deltas["smooth"], deltas["relu"])
    for attack_grad in ("smooth", "relu"):
        for train_grad in ("smooth", "relu"):
            reference = uniform[train_grad]
            reference.zero_grad()
            F.cross_entropy(reference(x + deltas[attack_grad]), y).backward()
            reference_grads[attack_grad, train_grad] = [p.grad.clone() for p in reference.parameters()]
            model = _cell(base, attack_grad, train_grad)
            torch.manual_seed(1)
            out = PGDTrainer(model, THREAT, steps=2, alpha=0.1).step(x, y)  # what the engine runs
            out.loss.backward()
            for p, q in zip(model.parameters(), reference_grads[attack_grad, train_grad]):
                assert torch.allclose(p.grad, q, atol=1e-7, rtol=1e-5), (attack_grad, train_grad)
            assert model._advplug_sat_roles.counts == {"attack": 2, "train": 1}  # 2 PGD steps, 1 update
        smooth, relu = reference_grads[attack_grad, "smooth"], reference_grads[attack_grad, "relu"]
        assert not all(torch.allclose(p, q, atol=1e-7, rtol=1e-5) for p, q in zip(smooth, relu))


def test_evaluation_attacks_use_the_attack_gradient(mnist):
    """Under eval_frozen (parameters without grad) and for torchattacks' PGD (the monitor's
    and the final test's attack) the attacker's switch applies: with attack_grad=relu the
    adversarial examples are the ReLU network's, bit for bit."""
    x, y = mnist[0][:16], mnist[1][:16]
    base = mnist_cnn().eval()
    model = _cell(base, "relu", "smooth")
    with eval_frozen(model), eval_frozen(base):
        assert torch.equal(input_gradient(model, x, y, torch.zeros_like(x)),
                           input_gradient(base, x, y, torch.zeros_like(x)))
    runs = []
    for m in (base, model, _cell(base, "smooth", "relu")):
        torch.manual_seed(3)
        runs.append(pgd_attack(m, THREAT, steps=3)(x, y))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    # and a forced role overrides the rule: the attacker's forward built as the optimizer's
    with gradient_role("train"):
        assert torch.equal(input_gradient(_cell(base, "relu", "smooth"), x, y, torch.zeros_like(x)),
                           input_gradient(_cell(base, "smooth", "smooth"), x, y, torch.zeros_like(x)))


def test_swaps_every_relu_of_a_torchvision_resnet():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10)
    keys = set(model.state_dict())
    out = smooth_activation(model, fn="silu").eval()
    assert type(out).__name__ == "ResNet" and set(out.state_dict()) == keys
    assert_no_relu(out)
    assert sum(isinstance(m, nn.SiLU) for m in out.modules()) == 9  # one per block + the stem
    x = torch.rand(2, 3, 32, 32)
    assert relu_calls(out, x) == 0
    backward = smooth_activation(torchvision.models.resnet18(num_classes=10), fn="gelu", mode="backward")
    assert sum(isinstance(m, ReLUSmoothBackward) for m in backward.modules()) == 9


def test_functional_relu_is_replaced_through_fx():
    torch.manual_seed(0)
    model = FunctionalNet()
    reference = copy.deepcopy(model)
    keys = set(model.state_dict())
    out = smooth_activation(model, fn="silu").eval()
    assert out is model and type(out) is FunctionalNet and rewritten(out) is not None
    assert_no_relu(out)
    assert set(out.state_dict()) == keys and out.num_classes == 10  # unused params and attributes kept
    assert sum(isinstance(m, nn.SiLU) for m in out.modules()) == 4
    x = torch.rand(3, 1, 28, 28)
    assert relu_calls(out, x) == 0
    assert torch.allclose(out(x), functional_net_with(F.silu, reference, x), atol=1e-6)
    # copies keep the rewrite (traced again on first use) and their own hooks
    twin = copy.deepcopy(out)
    assert torch.equal(twin(x), out(x)) and rewritten(twin).owner is twin
    # backward mode on the same model: ReLU's outputs (the in-place one included), and the
    # role hooks survive a deepcopy (e.g. torch.optim.swa_utils.AveragedModel)
    back = copy.deepcopy(smooth_activation(copy.deepcopy(reference), fn="softplus", mode="backward",
                                           attack_grad="relu", train_grad="smooth"))
    assert torch.equal(back(x), functional_net_with(torch.relu, reference, x))
    x.requires_grad_(True)
    back(x).sum().backward()
    assert back._advplug_sat_roles.counts == {"attack": 1, "train": 1}


def test_untraceable_module_with_functional_relu_is_one_clear_error():
    with pytest.raises(AdvplugError) as err:
        smooth_activation(Untraceable())
    message = str(err.value)
    assert "the model (Untraceable)" in message and "torch.fx cannot trace it" in message and "F.relu" in message
    assert "\n" not in message
    # a forward that depends on self.training: fx would freeze one branch, so it counts as untraceable
    class ModeDependent(nn.Module):
        def forward(self, x):
            return F.relu(x * 2 if self.training else x)

    with pytest.raises(AdvplugError, match="ModeDependent.*differs between training and eval mode"):
        smooth_activation(ModeDependent())


def test_untraceable_model_is_handled_child_by_child():
    model = smooth_activation(UntraceableModules(), fn="gelu")
    assert type(model) is UntraceableModules and rewritten(model) is None and rewritten(model.head) is not None
    assert_no_relu(model)
    assert relu_calls(model, torch.rand(2, 1, 28, 28)) == 0


def test_relu_hidden_from_both_checks_fails_the_first_forward():
    model = smooth_activation(HelperRelu())  # its nn.ReLU is swapped; the helper's relu is not visible
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(AdvplugError, match=r"could not replace ran in the model's forward: module '<root>' "
                                           r"\(HelperRelu\) at .*test_sat_plugin.py"):
        model(x)
    with pytest.raises(AdvplugError, match="could not replace"):  # and every forward after it
        model(x)


def test_smooth_relu_alpha_is_learned_per_layer():
    act = SmoothReLU()
    assert act.alpha.item() == 400.0 and isinstance(act.alpha_root, nn.Parameter)
    x = torch.linspace(-1, 1, 101)
    y = act(x)
    assert torch.all(y[x < 0] == 0) and torch.allclose(y[x > 0], x[x > 0] - torch.log1p(400 * x[x > 0]) / 400)
    torch.optim.SGD(act.parameters(), lr=0.1).zero_grad()
    act(x).sum().backward()
    assert act.alpha_root.grad is not None and act.alpha_root.grad != 0
    assert "alpha_root" in dict(SmoothReLU(learnable=False).named_buffers())


def test_train_save_load_round_trip(tmp_path, data_root, mnist):
    run = advplug.train(tiny_config(tmp_path, data_root, transforms=["smooth-activation:fn=softplus"]))
    assert run.spec["transforms"] == ["smooth-activation:fn=softplus"]
    loaded = advplug.load_model(run.out_dir / "model.pt")
    assert_no_relu(loaded)
    assert isinstance(loaded.features[1], nn.Softplus) and loaded.features[1].beta == 10
    x = mnist[0]
    run.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), run.model(x))
    final = json.loads((run.out_dir / "final_eval.json").read_text())
    assert final["samples"] == 128 and final["pgd_acc"] is not None


def test_backward_mode_run_counts_attacker_and_optimizer_forwards(tmp_path, data_root):
    run = advplug.train(tiny_config(tmp_path, data_root, trainer="fgsm-rs", eps=0.3, train_subset=128,
                                    monitor_size=32, eval_steps=0,
                                    transforms=["smooth-activation:fn=smooth-relu,mode=backward,attack_grad=relu"]))
    metrics = [json.loads(line) for line in (run.out_dir / "metrics.jsonl").read_text().splitlines()]
    # 2 batches: one attacker forward (FGSM) and one optimizer forward each, plus evaluation-mode
    # clean-accuracy checks; the monitor's PGD-2 on 2 x 32 images adds attacker forwards
    assert metrics[0]["sat_attack_forwards"] == 2 + 2 * 2
    assert metrics[0]["sat_train_forwards"] >= 2
    loaded = advplug.load_model(run.out_dir / "model.pt")
    act = loaded.features[1]
    assert isinstance(act, ReLUSmoothBackward) and (act.fn, act.attack_grad, act.train_grad) == (
        "smooth-relu", "relu", "smooth")


def test_cli_train_with_the_transform_then_eval(tmp_path, data_root, capsys):
    out = tmp_path / "cli"
    assert cli.main(["train", "--dataset", "mnist", "--transform", "smooth-activation:fn=silu,mode=forward",
                     "--epochs", "1", "--train-subset", "256", "--test-subset", "64", "--monitor-size", "0",
                     "--eval-steps", "0", "--data-root", str(data_root), "--out", str(out), "--no-plot",
                     "--no-progress", "--device", "cpu"]) == 0
    assert "smooth-activation: 3 nn.ReLU module(s) and 0 functional relu call(s) replaced by silu" in capsys.readouterr().out
    loaded = advplug.load_model(out / "model.pt")
    assert_no_relu(loaded)
    assert isinstance(loaded.features[1], nn.SiLU)
    assert cli.main(["eval", "--model", str(out / "model.pt"), "--attacks", "fgsm,pgd:steps=3", "--test-subset", "32",
                     "--data-root", str(data_root), "--out", str(tmp_path / "ev"), "--device", "cpu",
                     "--no-progress"]) == 0
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    (result,) = report["models"].values()
    assert [row["robust_acc"] is not None for row in result["attacks"]] == [True, True]
