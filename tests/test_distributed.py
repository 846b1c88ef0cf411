"""Data-parallel training under torchrun (gloo, 2 CPU processes): the same model as one
process with the same global batch, trainer-owned modules identical on every process, files
from rank 0 only, resume with another number of processes; and the collectives themselves."""
import json
import os
import subprocess
import sys

import pytest
import torch

# 2 processes x 1 thread on the 2-core CI machine
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
#: largest |weight difference| allowed between a 2-process run and one process: the
#: processes compute the same sums in another order (float rounding), which an optimizer
#: and a sign-gradient attack carry on for a few steps; seen 2.6e-7 (pgd-at), 2.8e-6 (fgsm-sdi)
TOLERANCE = 1e-4


def _args(tmp_path, data_root, name, trainer, model="wong2020-mnist", dataset="mnist", epochs=2, extra=()):
    return ["--dataset", dataset, "--model", model, "--trainer", trainer, "--train-subset", "64",
            "--batch-size", "16", "--epochs", str(epochs), "--monitor-size", "16",
            "--eval-steps", "0", "--test-subset", "16", "--data-root", str(data_root), "--no-progress",
            "--out", str(tmp_path / name), *extra]


def torchrun(args, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "advplug", "train", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def one_process(args, command="train"):
    """The same command in this process (what `advplug ...` runs), its exit status checked;
    one torch thread, as each torchrun process has (sums in the same order)."""
    from advplug.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([command, *args]) == 0
    finally:
        torch.set_num_threads(threads)


def _checkpoint(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_pgd_at_on_two_processes_trains_the_one_process_model(tmp_path, data_root, capsys):
    trainer = "pgd-at:steps=3,random_start=false"  # no random start: the same attack in both runs
    one_process(_args(tmp_path, data_root, "one", trainer))
    ddp = _ok(torchrun(_args(tmp_path, data_root, "two", trainer)))
    one, two = _checkpoint(tmp_path / "one"), _checkpoint(tmp_path / "two")
    assert _max_diff(one["model"], two["model"]) < TOLERANCE
    assert two["world_size"] == 2 and len(two["rng_ranks"]) == 2
    # rank 0 alone prints and writes: one line per epoch, one final line
    assert ddp.stdout.count("run written to") == 1 and ddp.stdout.count("epoch 2 |") == 1
    m1 = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    # the epoch's numbers are the whole batch's (summed over processes), not rank 0's half
    assert [m["train_samples"] for m in m2] == [64, 64]
    for a, b in zip(m1, m2):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-4)
        assert b["train_acc"] == pytest.approx(a["train_acc"], abs=1e-6)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["status"] == "completed"

    # resumed on one process (the checkpoint was written by two): it says so and goes on
    # to the model an uninterrupted 2-process run reaches
    first = _ok(torchrun(_args(tmp_path, data_root, "resumed", trainer, epochs=1)))
    assert "epoch 1 |" in first.stdout
    one_process(["--resume", str(tmp_path / "resumed"), "--epochs", "2", "--no-progress"])
    assert "resuming a run written by 2 process(es) with 1" in capsys.readouterr().err
    assert _max_diff(_checkpoint(tmp_path / "resumed")["model"], two["model"]) < TOLERANCE


def test_fgsm_sdi_generator_is_one_on_every_process_and_matches_one_process(tmp_path, data_root):
    trainer = "fgsm-sdi:k=2"  # a generator update every other batch
    one_process(_args(tmp_path, data_root, "one", trainer))
    _ok(torchrun(_args(tmp_path, data_root, "two", trainer)))  # fails if the generators drifted apart
    one, two = _checkpoint(tmp_path / "one"), _checkpoint(tmp_path / "two")
    assert _max_diff(one["model"], two["model"]) < TOLERANCE
    gen1, gen2 = one["trainer"]["generator"], two["trainer"]["generator"]
    assert _max_diff(gen1, gen2) < TOLERANCE  # BatchNorm statistics included (over the global batch)
    assert two["trainer"]["steps"] == one["trainer"]["steps"] == 8


@pytest.mark.slow
def test_batchnorm_over_the_global_batch_matches_one_process(tmp_path, data_root):
    """PreAct ResNet (BatchNorm everywhere) on CIFAR-10: BatchNorm over the global batch (the
    default) gives the one-process model; per-process statistics do not. (The standard
    trainer: a sign-gradient attack turns rounding-level differences of near-zero input
    gradients into whole steps, which BatchNorm's cross-sample terms make common.)"""
    args = dict(trainer="standard", model="preact-resnet18:width=4", dataset="cifar10",
                epochs=1, extra=("--no-verify-checksums", "--no-augment", "--lr", "0.01"))
    one_process(_args(tmp_path, data_root, "one", **args))
    _ok(torchrun(_args(tmp_path, data_root, "synced", **args)))
    per_process = dict(args, extra=args["extra"] + ("--no-sync-bn",))
    _ok(torchrun(_args(tmp_path, data_root, "local", **per_process)))
    one = _checkpoint(tmp_path / "one")["model"]
    assert _max_diff(one, _checkpoint(tmp_path / "synced")["model"]) < TOLERANCE
    assert _max_diff(one, _checkpoint(tmp_path / "local")["model"]) > 100 * TOLERANCE


def test_a_batch_smaller_than_the_process_count_is_one_clear_error(tmp_path, data_root):
    from advplug.config import make_config
    from advplug.distributed import Distributed
    from advplug.engine import Run
    from advplug.errors import AdvplugError
    from conftest import tiny_config

    cfg = make_config(tiny_config(tmp_path, data_root, batch_size=1))
    with pytest.raises(AdvplugError, match="batch_size 1 is smaller than the 2 processes torchrun started"):
        Run(cfg, dist=Distributed(rank=0, world_size=2))  # refused before any collective


def test_a_sharded_evaluation_is_the_one_process_evaluation_sample_by_sample(tmp_path, data_root,
                                                                             standard_model_path):
    """Two processes attack alternate batches (3 batches of 16 images: 2 and 1); the gathered
    per-sample results, accuracies and notes are one process's, AutoAttack's APGD included."""
    args = ["eval", "--model", str(standard_model_path), "--attacks", "fgsm,pgd:steps=3,deepfool,apgd",
            "--eps", "0.1", "--test-subset", "48", "--batch-size", "16", "--data-root", str(data_root),
            "--no-progress"]
    one_process([*args[1:], "--out", str(tmp_path / "one")], command="eval")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "advplug", *args, "--out", str(tmp_path / "two")], env=ENV, capture_output=True,
                         text=True, timeout=300)
    _ok(two)
    assert two.stdout.count("written:") == 1  # rank 0 alone reports
    stored = sorted(p.name for p in (tmp_path / "one" / "results").iterdir())
    assert len(stored) == 4 and stored == sorted(p.name for p in (tmp_path / "two" / "results").iterdir())
    for name in stored:
        a, b = (json.loads((tmp_path / run / "results" / name).read_text()) for run in ("one", "two"))
        assert a["key"] == b["key"] and a["correct"] == b["correct"]
        assert {**a["row"], "seconds": 0} == {**b["row"], "seconds": 0}
    e1, e2 = (json.loads((tmp_path / run / "eval.json").read_text()) for run in ("one", "two"))
    r1, r2 = e1["models"], e2["models"]
    for label in r1:
        assert r1[label]["clean_acc"] == r2[label]["clean_acc"]
        assert r1[label]["worst_case_acc"] == r2[label]["worst_case_acc"]
        assert 0 < r1[label]["worst_case_acc"] < r1[label]["clean_acc"]  # the attacks did something


@pytest.mark.slow
def test_a_sharded_autoattack_benchmark_is_the_one_process_benchmark(tmp_path, data_root):
    """RobustBench's protocol (AutoAttack standard, advplug's resumable runner) on 40 CIFAR-10
    images in batches of 8, by one process and by two: the same robust flags, the same model_info."""
    advplug_train = ["--dataset", "cifar10", "--no-verify-checksums", "--model", "mnist-cnn", "--trainer", "standard",
                     "--train-subset", "1000", "--epochs", "2", "--monitor-size", "0", "--eval-steps", "0",
                     "--test-subset", "16", "--data-root", str(data_root), "--no-progress", "--out", str(tmp_path / "m")]
    one_process(advplug_train)
    args = ["benchmark", "--model", str(tmp_path / "m" / "model.pt"), "--dataset", "cifar10", "--n-examples", "40",
            "--batch-size", "8", "--eps", "4/255", "--no-verify-checksums", "--data-root", str(data_root), "--quiet"]
    _ok(subprocess.run([sys.executable, "-m", "advplug", *args, "--out", str(tmp_path / "one")], env=ENV,
                       capture_output=True, text=True, timeout=600))
    two = _ok(subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              "-m", "advplug", *args, "--out", str(tmp_path / "two")], env=ENV, capture_output=True,
                             text=True, timeout=600))
    assert "2 processes" in two.stdout
    states = [json.loads((tmp_path / run / "m" / "autoattack_state.json").read_text()) for run in ("one", "two")]
    assert states[0]["robust_flags"] == states[1]["robust_flags"] and states[1]["done"] == states[0]["done"]
    assert not list((tmp_path / "two" / "m").glob("autoattack_state.rank*.json"))  # folded into rank 0's
    infos = [json.loads((tmp_path / run / "m.json").read_text()) for run in ("one", "two")]
    assert infos[0]["autoattack_acc"] == infos[1]["autoattack_acc"] and infos[0]["clean_acc"] == infos[1]["clean_acc"]


def test_a_sharded_state_resumes_with_any_number_of_processes():
    """The state files of an interrupted 2-process AutoAttack merge into one: flags ANDed,
    batches done united; a state saved before sharding (a count of batches) still reads."""
    from advplug.benchmark.resumable_autoattack import _merged

    flags = torch.tensor([True, True, True, True])
    rank0 = {"done": ["apgd-ce"], "current": {"attack": "apgd-t", "start_flags": [True] * 4, "batches_done": [0]},
             "robust_flags": flags & torch.tensor([False, True, True, True])}
    rank1 = {"done": ["apgd-ce"], "current": {"attack": "apgd-t", "start_flags": [True] * 4, "batches_done": [1]},
             "robust_flags": flags & torch.tensor([True, True, False, True])}
    stale = {"done": [], "current": {"attack": "apgd-ce", "start_flags": [True] * 4, "batches_done": 3},
             "robust_flags": torch.tensor([False] * 4)}
    merged = _merged([rank0, rank1, stale])
    assert merged["robust_flags"].tolist() == [False, True, False, True]
    assert merged["current"]["batches_done"] == [0, 1] and merged["done"] == ["apgd-ce"]
    assert _merged([stale])["current"]["batches_done"] == [0, 1, 2]


# -- the collectives, in two spawned gloo processes ------------------------------------------

def _group_worker(rank, port, fn, queue):
    import torch.distributed as dist

    from advplug import distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    group, _ = distributed.setup("cpu")
    try:
        queue.put((rank, fn(group)))
    except Exception as exc:  # noqa: BLE001 - sent back to the test
        queue.put((rank, exc))
    finally:
        dist.destroy_process_group()


def in_two_processes(fn):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_group_worker, args=(r, port, fn, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return [results[0], results[1]]


def _weighted_gradients(group):
    p = torch.nn.Parameter(torch.zeros(3))
    unused = torch.nn.Parameter(torch.zeros(1))
    p.grad = torch.full((3,), float(group.rank + 1))
    group.average_gradients([p, unused], weight=0.25 if group.rank == 0 else 0.75)
    return p.grad.tolist(), unused.grad


def test_gradients_are_averaged_with_each_process_weight():
    for grad, unused in in_two_processes(_weighted_gradients):
        assert grad == [0.25 * 1 + 0.75 * 2] * 3
        assert unused is None  # no process had a gradient: none after


def _drifted(group):
    from advplug.errors import AdvplugError

    try:
        group.check_in_sync("epoch 1", {"trainer.generator.w": torch.tensor([float(group.rank)]),
                                        "model.w": torch.ones(2)})
    except AdvplugError as exc:
        return str(exc)
    return None


def test_processes_that_drifted_apart_are_one_error_naming_the_tensor():
    for message in in_two_processes(_drifted):
        assert message and "trainer.generator.w" in message and "model.w" not in message
        assert "Trainer.average_gradients" in message


def _global_batchnorm(group):
    from advplug.distributed import sync_batchnorm

    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    net = sync_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)))
    net.load_state_dict(ref.state_dict())
    x, w = torch.randn(10, 3, 6, 6), torch.randn(10, 4, 4, 4)
    rows = group.rows(10)
    mine, whole = x[rows].clone().requires_grad_(), x.clone().requires_grad_()
    out, ref_out = net(mine), ref(whole)
    (out * w[rows]).sum().backward()
    (ref_out * w).sum().backward()
    grads = [q.grad.clone() for q in net.parameters()]
    for g in grads:
        torch.distributed.all_reduce(g)
    return {"out": (out - ref_out[rows]).abs().max().item(),
            "input_grad": (mine.grad - whole.grad[rows]).abs().max().item(),
            # relative to the largest gradient (sums of 160 terms; the conv bias's is ~0 before BatchNorm)
            "param_grad": max((g - q.grad).abs().max().item() for g, q in zip(grads, ref.parameters()))
            / max(q.grad.abs().max().item() for q in ref.parameters()),
            "running": max((a - b).abs().max().item() for a, b in zip(net[1].buffers(), ref[1].buffers())),
            "keys": list(net.state_dict()) == list(ref.state_dict())}


def test_global_batchnorm_is_batchnorm_over_every_process_rows():
    for result in in_two_processes(_global_batchnorm):
        assert result.pop("keys")
        assert max(result.values()) < 1e-5, result


def test_one_process_needs_no_process_group():
    from advplug import distributed

    assert not distributed.launched() and distributed.current() is distributed.SINGLE
    model = torch.nn.BatchNorm2d(2)
    assert distributed.sync_batchnorm(model) is model and type(model) is torch.nn.BatchNorm2d
    assert distributed.SINGLE.rows(7) == slice(0, 7) and list(distributed.SINGLE.mine(3)) == [0, 1, 2]
    assert distributed.Distributed(1, 3).rows(7) == slice(3, 5)  # 3 + 2 + 2 rows
