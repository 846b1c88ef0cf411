"""Robustness evaluation: every model on the identical test samples, fresh adversarial
examples per attack, per-sample worst case over all attacks."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .attacks.base import build_attack, eval_frozen, split_attack_list
from .data import load_split, subset_indices
from .errors import AdvplugError
from .threat import Threat

#: the seed study's MNIST protocol: FGSM and 20-step PGD at Linf ε = 0.3, CW-L2 with 30
#: iterations, DeepFool (minimal-perturbation attacks projected onto the ε-ball)
MNIST_PROTOCOL = "fgsm,pgd:steps=20,cw:steps=30,deepfool"
DEFAULT_ATTACKS = "fgsm,pgd:steps=20,apgd"
DEFAULT_EPS = {("mnist", "Linf"): 0.3, ("mnist", "L2"): 2.0}


def default_eps(dataset: str, norm: str) -> float:
    return DEFAULT_EPS.get((dataset, norm), 8 / 255 if norm == "Linf" else 0.5)


def default_attacks(dataset: str) -> str:
    return MNIST_PROTOCOL if dataset == "mnist" else DEFAULT_ATTACKS


@dataclass
class TestSet:
    dataset: str
    x: torch.Tensor  # uint8 NCHW
    y: torch.Tensor
    indices: torch.Tensor
    seed: int


def load_test_set(spec, n=None, seed=42, **load_kwargs) -> TestSet:
    x, y = load_split(spec, False, **load_kwargs)
    idx = subset_indices(len(y), None if n is None else min(n, len(y)), seed)
    return TestSet(spec.name, x[idx], y[idx], idx, seed)


def _batches(test: TestSet, batch_size, device):
    for start in range(0, len(test.y), batch_size):
        x = test.x[start:start + batch_size].to(device).float().div_(255)
        yield start, x, test.y[start:start + batch_size].to(device)


def predictions_correct(model, test, batch_size, device, attack=None, desc=None, progress=False):
    """Per-sample bool: is the model right on (attacked) sample i."""
    out = torch.zeros(len(test.y), dtype=torch.bool)
    bar = tqdm(total=len(test.y), desc=desc, disable=not progress, leave=False, unit="img")
    for start, x, y in _batches(test, batch_size, device):
        if attack is not None:
            x = attack(x, y)
        with torch.no_grad():
            out[start:start + len(y)] = (model(x).argmax(1) == y).cpu()
        bar.update(len(y))
    bar.close()
    return out


def evaluate_model(model, test: TestSet, attacks: str, threat: Threat, registry, batch_size=256,
                   device="cpu", seed=42, progress=False) -> dict:
    """Clean and per-attack robust accuracy, worst case, mean, gap and time per attack."""
    model = model.to(device)
    with eval_frozen(model):  # attacks need input gradients only; leave none on the model
        return _evaluate(model, test, attacks, threat, registry, batch_size, device, seed, progress)


def _evaluate(model, test, attacks, threat, registry, batch_size, device, seed, progress):
    n = len(test.y)
    clean = predictions_correct(model, test, batch_size, device)
    rows, worst = [], clean.clone()
    for spec in split_attack_list(attacks):
        torch.manual_seed(seed)  # every model meets the same attack randomness
        attack = build_attack(registry, spec, model, threat)
        start = time.perf_counter()
        correct = predictions_correct(model, test, batch_size, device, attack, desc=attack.name, progress=progress)
        seconds = time.perf_counter() - start
        worst &= correct
        row = {"attack": spec, "name": attack.name, "library": attack.info.library,
               "robust_acc": 100.0 * correct.sum().item() / n, "seconds": seconds,
               "black_box": attack.info.black_box, "minimal": attack.info.minimal}
        if attack.info.minimal:
            row["median_perturbation"] = attack.median_norm
            row["note"] = (f"minimal-perturbation attack, projected onto the {threat} ball; "
                           f"median unprojected {threat.norm} norm {attack.median_norm:.4g}")
        rows.append(row)
        row["_correct"] = correct
    accs = [r["robust_acc"] for r in rows]
    return {
        "clean_acc": 100.0 * clean.sum().item() / n,
        "attacks": rows,
        "worst_case_acc": 100.0 * worst.sum().item() / n,
        "mean_robust_acc": sum(accs) / len(accs) if accs else None,
        "best_minus_worst": (max(accs) - min(accs)) if accs else None,
        "total_seconds": sum(r["seconds"] for r in rows),
    }


def check_same_dataset(models: dict, dataset: str):
    for name, (_, spec) in models.items():
        if spec and spec.get("dataset") not in (None, dataset):
            raise AdvplugError(f"model {name} was trained on {spec['dataset']}, not {dataset}; "
                               f"pass --dataset {spec['dataset']} or evaluate it separately")


def run_evaluation(models: dict, dataset: str | None = None, attacks: str | None = None, norm: str = "Linf",
                   eps=None, test_subset: int | None = None, seed: int = 42, data_root=None,
                   verify_checksums: bool = True, batch_size: int = 256, device: str = "cpu",
                   sanity: bool = False, sanity_samples: int = 200, out=None, registry=None,
                   progress: bool = False) -> dict:
    """Evaluate ``{name: (model, spec)}`` on one identical test subset; write reports to ``out``."""
    from . import manifest
    from .host import get_host
    from .report import text_table, write_reports
    from .sanity import run_sanity_checks

    registry = registry or get_host().registry
    if dataset is None:
        found = {spec.get("dataset") for _, spec in models.values() if spec}
        if len(found) != 1 or None in found:
            raise AdvplugError("pass --dataset: it cannot be read from the model files")
        dataset = found.pop()
    check_same_dataset(models, dataset)
    spec = registry.get("datasets", dataset)
    threat = Threat(norm, default_eps(dataset, Threat(norm, 0).norm) if eps is None else eps)
    attacks = attacks or default_attacks(dataset)
    for attack_spec in split_attack_list(attacks):  # unknown names fail before any work
        from .params import parse_spec

        registry.entry("attacks", parse_spec(attack_spec)[0])
    test = load_test_set(spec, test_subset, seed, data_root=data_root, verify_checksums=verify_checksums)
    results = {}
    for name, (model, _spec) in models.items():
        results[name] = evaluate_model(model, test, attacks, threat, registry, batch_size, device, seed, progress)
        if sanity:
            results[name]["sanity"] = run_sanity_checks(model, test, threat, registry, device, sanity_samples,
                                                        batch_size)
    meta = {"dataset": dataset, "threat": {"norm": threat.norm, "eps": threat.eps}, "attacks": attacks,
            "samples": len(test.y), "seed": seed, "test_indices": test.indices.tolist(),
            "versions": manifest.versions(), "time": manifest.now()}
    print(text_table(results))
    for name, res in results.items():
        for row in res["attacks"]:
            if row.get("note"):
                print(f"note: {name} / {row['attack']}: {row['note']}")
        for check in res.get("sanity", []):
            status = "ok  " if check["passed"] else "WARN"
            print(f"sanity {status} {name}: {check['check']}  {check['values']}")
    if out:
        json_path, md_path = write_reports(out, results, meta)
        print(f"written: {json_path}, {md_path}")
    return {"meta": meta, "results": results}
