"""The advplug-mix plugin (plugins/advplug-mix) and the host's sampler support: mixed-ratio
splits every batch exactly by its ratio, balances and reproduces its attack assignment,
keeps clean rows untouched and projects every adversarial row onto the threat ball;
mat-max keeps the higher-loss norm per sample, mat-rand draws its norm from (seed, step);
runs with --sampler train end to end (Python and CLI), refuse bad input with one clear
error and resume exactly."""
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

advplug_mix = pytest.importorskip("advplug_mix", reason="advplug-mix is not installed "
                                  "(pip install --no-deps -e plugins/advplug-mix)")

import advplug  # noqa: E402
from advplug.cli import main as cli_main  # noqa: E402
from advplug.errors import AdvplugError  # noqa: E402
from advplug.host import Host  # noqa: E402
from advplug.models.mnist_cnn import MnistCNN  # noqa: E402
from advplug.samplers import SamplerContext, attack_batch, training_attack  # noqa: E402
from advplug.threat import Threat  # noqa: E402
from advplug.trainers import SampledTrainer  # noqa: E402
from advplug_mix import MATSampler, MixedRatioSampler, clean_count, split_counts  # noqa: E402
from conftest import mnist_images, tiny_config  # noqa: E402

LINF = Threat("Linf", 0.3)


@pytest.fixture(scope="module")
def mnist(data_root):
    """64 MNIST training images in [0, 1]."""
    return mnist_images(data_root, 64)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MnistCNN().train()


def bound(sampler, model, threat=LINF, seed=0):
    sampler.bind(SamplerContext(model, threat, seed, advplug.registry(), torch.device("cpu")))
    return sampler


def norms(d, norm):
    d = d.flatten(1)
    return d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)


def test_plugin_registers_its_samplers_through_the_entry_point():
    assert advplug.registry().names("samplers") == ["mat-max", "mat-rand", "mixed-ratio"]
    rows = {row["name"]: row for row in Host().describe()}
    assert rows["mix"]["source"] == "entry point advplug_mix.plugin"
    assert rows["mix"]["registered"] == {"samplers": ["mat-max", "mat-rand", "mixed-ratio"]}


# -- mixed-ratio: the split ------------------------------------------------------------

@pytest.mark.parametrize("ratio, batch, n_clean", [
    ("10:90", 20, 2), ("10:90", 100, 10), ("50:50", 64, 32), ("30:70", 10, 3), ("30:70", 100, 30),
    ("1:3", 64, 16), ("0:100", 32, 0), ("100:0", 32, 32), ((25, 75), 8, 2)])
def test_clean_adversarial_split_is_exactly_the_ratio_in_every_batch(model, ratio, batch, n_clean):
    sampler = bound(MixedRatioSampler(ratio=ratio, attacks="fgsm,pgd:steps=2,cw"), model)
    for step in range(7):
        source = sampler.assignment(batch, step)
        assert int((source == 0).sum()) == n_clean
        assert int((source > 0).sum()) == batch - n_clean


def test_rounding_rule_where_the_ratio_is_not_exact():
    assert clean_count(64, 3, 7) == 19  # 19.2
    assert clean_count(10, 1, 3) == 3  # 2.5: halves go up
    assert clean_count(3, 1, 1) == 2  # 1.5
    assert clean_count(20, 1, 9) == 2


def test_clean_rows_are_untouched_and_adversarial_rows_stay_in_the_ball(model, mnist):
    x, y = mnist[0][:20], mnist[1][:20]
    sampler = bound(MixedRatioSampler(ratio="10:90", attacks="fgsm,pgd:steps=2"), model)
    batch = sampler.sample(x, y, step=3)
    assert torch.equal(batch.source, sampler.assignment(20, 3))
    clean, adv = batch.source == 0, batch.source > 0
    assert torch.equal(batch.adversarial, adv) and int(clean.sum()) == 2
    assert batch.sources == ("clean", "fgsm", "pgd:steps=2")
    assert torch.equal(batch.x[clean], x[clean])  # bit-identical
    assert not batch.x.requires_grad
    moved = norms(batch.x[adv] - x[adv], "Linf")
    assert (moved > 0.1).all() and (moved <= 0.3 + 1e-6).all()
    assert batch.x.min() >= 0 and batch.x.max() <= 1


@pytest.mark.parametrize("threat", [Threat("Linf", 0.01), Threat("L2", 0.05)])
def test_unbounded_attacks_cw_and_deepfool_are_projected_onto_the_ball(model, mnist, threat):
    x = mnist[0][:6]
    with torch.no_grad():
        y = model.eval()(x).argmax(1)  # the model is right on every row: DeepFool and CW must move
    model.train()
    sampler = bound(MixedRatioSampler(ratio="0:100", attacks="cw:steps=5+deepfool:steps=3"), model, threat)
    batch = sampler.sample(x, y, step=0)
    size = norms(batch.x - x, threat.norm)
    assert (size <= threat.eps * (1 + 1e-5)).all() and batch.x.min() >= 0 and batch.x.max() <= 1
    deepfool = batch.source == 2
    assert torch.allclose(size[deepfool], torch.tensor(threat.eps), rtol=1e-4)  # clipped to the radius


def test_sampling_leaves_no_parameter_gradients_and_keeps_the_training_mode(model, mnist):
    x, y = mnist[0][:8], mnist[1][:8]
    sampler = bound(MixedRatioSampler(ratio="0:100", attacks="fgsm,pgd:steps=2,cw:steps=3,deepfool:steps=2"), model)
    sampler.sample(x, y, step=0)
    assert model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


# -- mixed-ratio: the assignment ------------------------------------------------------

def test_attack_assignment_is_balanced_and_rotates_the_remainder():
    for n in range(0, 40):
        for step in range(5):
            counts = split_counts(n, 4, step)
            assert sum(counts) == n and max(counts) - min(counts) <= 1
    for n, k in ((6, 4), (7, 4), (5, 3), (64, 5)):
        totals = [sum(c) for c in zip(*(split_counts(n, k, step) for step in range(10, 10 + k)))]
        assert len(set(totals)) == 1  # over k consecutive batches every attack got the same


def test_attack_assignment_is_reproducible_from_seed_and_step(model):
    def sampler(seed):
        return bound(MixedRatioSampler(ratio="30:70"), model, seed=seed)

    a, b = sampler(0), sampler(0)
    source = a.assignment(64, 5)
    per_attack = torch.bincount(source, minlength=5)[1:]
    assert int(per_attack.max() - per_attack.min()) <= 1 and int(per_attack.sum()) == 64 - 19
    assert torch.equal(source, b.assignment(64, 5))
    assert not torch.equal(source, a.assignment(64, 6))
    assert not torch.equal(source, sampler(1).assignment(64, 5))


# -- mat-rand and mat-max ----------------------------------------------------------------

def test_mat_max_keeps_the_higher_loss_norm_per_sample(model, mnist):
    x, y = mnist[0][:32], mnist[1][:32]
    sampler = bound(MATSampler("mat-max", l2_eps=2.0, steps=2), model)
    torch.manual_seed(1)
    batch = sampler.sample(x, y, step=0)
    # the same two PGD attacks from the same random state, and their losses, by hand
    ctx = SamplerContext(model, LINF, 0, advplug.registry(), torch.device("cpu"))
    torch.manual_seed(1)
    x_linf = attack_batch(training_attack(ctx, "pgd:steps=2"), model, x, y)
    x_l2 = attack_batch(training_attack(ctx, "pgdl2:steps=2", Threat("L2", 2.0)), model, x, y)
    model.eval()
    with torch.no_grad():
        loss_linf = F.cross_entropy(model(x_linf), y, reduction="none")
        loss_l2 = F.cross_entropy(model(x_l2), y, reduction="none")
    model.train()
    pick_l2 = loss_l2 > loss_linf
    assert 0 < int(pick_l2.sum()) < 32  # both norms win somewhere
    assert torch.equal(batch.source, pick_l2.long()) and batch.sources == ("Linf", "L2")
    assert torch.equal(batch.x[pick_l2], x_l2[pick_l2]) and torch.equal(batch.x[~pick_l2], x_linf[~pick_l2])
    assert batch.adversarial.all()


def test_mat_rand_draws_one_norm_per_batch_from_seed_and_step(model, mnist):
    x, y = mnist[0][:8], mnist[1][:8]
    a = bound(MATSampler("mat-rand", l2_eps=2.0, steps=1), model)
    b = bound(MATSampler("mat-rand", l2_eps=2.0, steps=1), model)
    choices = [a.choose_norm(step) for step in range(20)]
    assert choices == [b.choose_norm(step) for step in range(20)] and set(choices) == {0, 1}
    other_seed = bound(MATSampler("mat-rand", l2_eps=2.0, steps=1), model, seed=1)
    assert choices != [other_seed.choose_norm(step) for step in range(20)]
    for step in (choices.index(0), choices.index(1)):
        batch = a.sample(x, y, step)
        norm = choices[step]
        assert (batch.source == norm).all()
        threat = a.threats[norm]
        assert (norms(batch.x - x, threat.norm) <= threat.eps * (1 + 1e-5)).all()


def test_mat_radii_default_to_the_run_threat_and_are_otherwise_required(model):
    with pytest.raises(AdvplugError, match="needs l2_eps.*linf_eps=0.3, l2_eps=2.0"):
        bound(MATSampler("mat-max"), model)  # a Linf run: no L2 radius to default to
    with pytest.raises(AdvplugError, match="needs linf_eps"):
        bound(MATSampler("mat-rand"), model, Threat("L2", 1.5))
    sampler = bound(MATSampler("mat-max", linf_eps=0.1), model, Threat("L2", 1.5))
    assert sampler.threats == (Threat("Linf", 0.1), Threat("L2", 1.5))
    with pytest.raises(AdvplugError, match="steps must be an integer"):
        MATSampler("mat-rand", steps=0)


# -- the host: trainer, engine, CLI ------------------------------------------------------------

def test_schedule_changing_eps_rebinds_the_sampler(model, mnist):
    x, y = mnist[0][:16], mnist[1][:16]
    sampler = MixedRatioSampler(ratio="0:100", attacks="fgsm")
    trainer = SampledTrainer(model, LINF, sampler, name="mixed-ratio")
    run = SimpleNamespace(config=SimpleNamespace(seed=0), registry=advplug.registry(), device=torch.device("cpu"),
                          threat=LINF)
    run.set_eps = lambda eps: (setattr(run, "threat", Threat("Linf", eps)), trainer.threat_changed())
    trainer.bind(run)
    trainer.set_attack_params(eps=0.1)  # through the run, which owns the threat (as Run.set_eps)
    out = trainer.step(x, y)
    assert out.loss.requires_grad and trainer.global_step == 1
    assert torch.allclose(norms(sampler.sample(x, y, 0).x - x, "Linf"), torch.tensor(0.1))
    assert trainer.epoch_metrics() == {"sampler_adversarial_share": 1.0, "sampler_share_clean": 0.0,
                                       "sampler_share_fgsm": 1.0}


def _weights(path):
    return advplug.load_model(path).state_dict()


def test_training_with_a_sampler_end_to_end(tmp_path, data_root):
    common = dict(train_subset=256, monitor_size=0, eval_steps=0, test_subset=64)
    mixed = advplug.train(tiny_config(tmp_path / "mix", data_root, sampler="mixed-ratio", **common,
                                      sampler_params={"ratio": "50:50", "attacks": "fgsm,pgd:steps=2"}))
    advplug.train(tiny_config(tmp_path / "std", data_root, **common))
    assert isinstance(mixed.trainer, SampledTrainer)
    metrics = mixed.history[-1]
    assert metrics["train_samples"] == 256 and metrics["sampler_adversarial_share"] == 0.5
    assert metrics["sampler_share_fgsm"] == metrics["sampler_share_pgd:steps=2"] == 0.25
    a, b = _weights(tmp_path / "mix" / "run" / "model.pt"), _weights(tmp_path / "std" / "run" / "model.pt")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((tmp_path / "mix" / "run" / "config.json").read_text())
    assert saved["sampler"] == "mixed-ratio" and saved["trainer"] == "standard"


def _cli_args(out, data_root, *extra):
    return ["train", "--dataset", "mnist", "--train-subset", "128", "--batch-size", "64", "--monitor-size", "0",
            "--eval-steps", "0", "--test-subset", "64", "--data-root", str(data_root), "--no-progress",
            "--no-plot", "--out", str(out), *extra]


def test_cli_sampler_and_exact_resume(tmp_path, data_root, capsys):
    spec = "mixed-ratio:ratio=30:70,attacks=fgsm+pgd:steps=2"
    assert cli_main(_cli_args(tmp_path / "straight", data_root, "--sampler", spec, "--epochs", "2")) == 0
    saved = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert saved["sampler"] == "mixed-ratio"
    assert saved["sampler_params"] == {"ratio": "30:70", "attacks": "fgsm+pgd:steps=2"}
    lines = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [m["sampler_share_clean"] for m in lines] == [38 / 128] * 2  # round(64 * 0.3) = 19 per batch

    assert cli_main(_cli_args(tmp_path / "resumed", data_root, "--sampler", spec, "--epochs", "1")) == 0
    assert cli_main(["train", "--resume", str(tmp_path / "resumed"), "--epochs", "2", "--no-progress"]) == 0
    a, b = _weights(tmp_path / "straight" / "model.pt"), _weights(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra, message", [
    (["--sampler", "mixed-ratio:attacks=fgsm+nope"], "unknown attack 'nope'"),
    (["--sampler", "mixed-ratio:ratio=abc"], "ratio 'abc' is not clean:adversarial"),
    (["--sampler", "mixed-ratio:ratio=50:50", "--trainer", "pgd-at"],
     "--sampler replaces the trainer's inner maximization; leave --trainer out (standard)"),
    (["--sampler", "mixed-ratio:mix=1"], "sampler 'mixed-ratio' has no parameter 'mix'"),
    (["--sampler", "mixed"], "unknown sampler 'mixed'"),
    (["--sampler", "mat-max:steps=2"], "needs l2_eps"),
    (["--sampler", "mixed-ratio", "--norm", "L2", "--eps", "1"], "does not support the L2 threat model"),
])
def test_bad_sampler_input_is_one_clear_error(tmp_path, data_root, capsys, extra, message):
    assert cli_main(_cli_args(tmp_path / "bad", data_root, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("advplug: error: ") and message in err[0]
