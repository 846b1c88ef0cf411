"""Robustness evaluation: every model on the identical test samples, fresh adversarial
examples per attack, per-sample worst case over all attacks.

No number is printed wrong without a word:

* a model whose logits hold NaN or inf is one error (any accuracy from it is meaningless);
* an attack's outputs with NaN or inf fall back to the clean input, are counted, and the
  report says how many (:class:`advplug.attacks.base.CheckedAttack`);
* every parameter and buffer of the model is fingerprinted before and after each attack:
  an attack that changed them is one error naming it (it would contaminate every attack
  after it);
* with an output folder, each finished (model, attack) result is written the moment it
  completes and reused on a rerun only when model, attack (all parameters), threat, test
  images, seed and batch size all match (:mod:`advplug.result_store`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .attacks.base import build_attack, eval_frozen, resolve_attack, split_attack_list
from .data import load_split, subset_indices
from .errors import AdvplugError, warn
from .fingerprint import changed_tensors, json_digest, model_identity, state_digests
from .threat import Threat, parse_norm

#: the seed study's MNIST protocol: FGSM and 20-step PGD at Linf ε = 0.3, CW-L2 with 30
#: iterations, DeepFool (minimal-perturbation attacks projected onto the ε-ball)
MNIST_PROTOCOL = "fgsm,pgd:steps=20,cw:steps=30,deepfool"
DEFAULT_ATTACKS = "fgsm,pgd:steps=20,apgd"
#: libraries whose versions are part of a stored result's key
RESULT_VERSIONS = ("advplug", "torch", "torchattacks", "adversarial-robustness-toolbox", "pyautoattack")


def default_attacks(dataset: str) -> str:
    return MNIST_PROTOCOL if dataset == "mnist" else DEFAULT_ATTACKS


@dataclass
class TestSet:
    dataset: str
    x: torch.Tensor  # uint8 NCHW
    y: torch.Tensor
    indices: torch.Tensor
    seed: int

    @property
    def identity(self) -> dict:
        """What a stored result must match: the dataset and the exact test indices."""
        return {"dataset": self.dataset, "samples": len(self.y), "indices": json_digest(self.indices.tolist())}


def load_test_set(spec, n=None, seed=42, **load_kwargs) -> TestSet:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise AdvplugError(f"--test-subset must be a whole number >= 1 (or left out for the whole test split), "
                           f"got {n!r}")
    x, y = load_split(spec, False, **load_kwargs)
    idx = subset_indices(len(y), None if n is None else min(n, len(y)), seed)
    return TestSet(spec.name, x[idx], y[idx], idx, seed)


@dataclass(frozen=True)
class AttackSpec:
    """One attack of an evaluation: ``text`` as the user wrote it (the table's column),
    ``name`` the registered name, ``params`` checked with every default filled in."""

    text: str
    name: str
    params: dict

    @property
    def identity(self) -> dict:
        return {"name": self.name, "params": self.params}


def resolve_attacks(registry, attacks: str, threat: Threat) -> list[AttackSpec]:
    """Every attack of a comma-separated list, checked (name, parameters, norm) before any
    data is loaded or any model is attacked."""
    specs = []
    for text in split_attack_list(attacks):
        entry, _info, params = resolve_attack(registry, text, threat)
        spec = AttackSpec(text, entry.name, params)
        twin = next((s for s in specs if s.identity == spec.identity), None)
        if twin is not None:  # one table column per attack: a second one would hide the first's number
            same = "is given twice" if twin.text == text else f"is the same attack as {twin.text!r}"
            raise AdvplugError(f"attack {text!r} {same} (attack {entry.name} with {params}); give each attack once")
        specs.append(spec)
    if not specs:
        raise AdvplugError(f"no attacks in {attacks!r}; e.g. --attacks fgsm,pgd:steps=20")
    return specs


def _batches(test: TestSet, batch_size, device):
    for start in range(0, len(test.y), batch_size):
        x = test.x[start:start + batch_size].to(device).float().div_(255)
        yield start, x, test.y[start:start + batch_size].to(device)


def nonfinite_logits_error(what: str, bad: int, total: int) -> AdvplugError:
    """Non-finite logits mean nothing (``argmax`` of NaN picks a class, and that counted as
    correct ~10% of the time): one error instead of an accuracy."""
    return AdvplugError(f"{what}: the model returned non-finite logits (NaN/inf) for {bad} of {total} inputs; "
                        f"its accuracy would be meaningless (diverged training, or a numerical problem in the model)")


def predictions_correct(model, test, batch_size, device, attack=None, desc=None, progress=False,
                        what="model") -> torch.Tensor:
    """Per-sample bool: is the model right on (attacked) sample i."""
    out = torch.zeros(len(test.y), dtype=torch.bool)
    bar = tqdm(total=len(test.y), desc=desc, disable=not progress, leave=False, unit="img")
    for start, x, y in _batches(test, batch_size, device):
        if attack is not None:
            x = attack(x, y)
        with torch.no_grad():
            logits = model(x)
        # one transfer per batch: correct and finite together
        correct, finite = torch.stack([logits.argmax(1) == y, torch.isfinite(logits).all(1)]).cpu()
        if not finite.all():
            raise nonfinite_logits_error(what, int((~finite).sum()), len(finite))
        out[start:start + len(y)] = correct
        bar.update(len(y))
    bar.close()
    return out


def evaluate_model(model, test: TestSet, attacks, threat: Threat, registry, batch_size=256,
                   device="cpu", seed=42, progress=False, *, name="model", spec=None, store=None) -> dict:
    """Clean and per-attack robust accuracy, worst case, mean, gap and time per attack.

    ``attacks`` is a comma-separated string or a list of :class:`AttackSpec`; ``store`` a
    :class:`advplug.result_store.ResultStore` to write each finished result to and reuse
    matching ones from; ``name`` and ``spec`` name and describe the model."""
    if isinstance(attacks, str):
        attacks = resolve_attacks(registry, attacks, threat)
    model = model.to(device)
    with eval_frozen(model):  # attacks need input gradients only; leave none on the model
        return _evaluate(model, test, attacks, threat, registry, batch_size, device, seed, progress, name,
                         spec, store)


def _evaluate(model, test, attacks, threat, registry, batch_size, device, seed, progress, name, spec, store):
    n = len(test.y)
    digests = state_digests(model)
    identity = model_identity(model, digests, spec)
    clean = predictions_correct(model, test, batch_size, device, what=f"model {name} on clean test images")
    rows, worst = [], clean.clone()
    libraries = _library_versions() if store is not None else None
    for attack_spec in attacks:
        key = _result_key(identity, attack_spec, threat, test, seed, batch_size, libraries)
        stored = store.get(key) if store is not None else None
        if stored is not None:
            row, correct, when = stored
            row = {**row, "reused_from": when}
            print(f"[eval] {name} / {attack_spec.text}: reusing the result computed {when} "
                  f"({store.path(key)})", flush=True)
        else:
            row, correct = _attack_row(model, test, attack_spec, threat, registry, batch_size, device, seed,
                                       progress, name, digests)
            if store is not None:
                store.put(key, row, correct)
        worst &= correct
        rows.append({**row, "_correct": correct})
    accs = [r["robust_acc"] for r in rows]
    return {
        "clean_acc": 100.0 * clean.sum().item() / n,
        "attacks": rows,
        "worst_case_acc": 100.0 * worst.sum().item() / n,
        "mean_robust_acc": sum(accs) / len(accs) if accs else None,
        "best_minus_worst": (max(accs) - min(accs)) if accs else None,
        "total_seconds": sum(r["seconds"] for r in rows),
        "model_identity": identity,
    }


def _result_key(identity, attack_spec, threat, test, seed, batch_size, libraries) -> dict:
    return {"model": identity, "attack": attack_spec.identity, "threat": {"norm": threat.norm, "eps": threat.eps},
            "test": test.identity, "seed": seed, "batch_size": batch_size, "versions": libraries}


def _library_versions() -> dict:
    """The versions of the libraries that compute a result (part of its stored key)."""
    from .manifest import versions

    known = versions()
    return {k: known.get(k) for k in RESULT_VERSIONS}


def _attack_row(model, test, attack_spec, threat, registry, batch_size, device, seed, progress, name, digests):
    """Run one attack on every test image -> (report row, per-sample correct flags)."""
    torch.manual_seed(seed)  # every model meets the same attack randomness
    attack = build_attack(registry, attack_spec.text, model, threat)
    start = time.perf_counter()
    correct = predictions_correct(model, test, batch_size, device, attack, desc=attack.name, progress=progress,
                                  what=f"model {name} under attack {attack_spec.text}")
    seconds = time.perf_counter() - start
    changed = changed_tensors(digests, state_digests(model))
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise AdvplugError(f"attack {attack_spec.text!r} changed the weights or buffers of model {name} ({shown}); "
                           f"its result and those of every attack after it would be wrong. An attack must not "
                           f"modify the model it attacks")
    row = {"attack": attack_spec.text, "name": attack.name, "library": attack.info.library,
           "robust_acc": 100.0 * correct.sum().item() / len(test.y), "seconds": seconds,
           "black_box": attack.info.black_box, "minimal": attack.info.minimal}
    notes = []
    if attack.info.minimal:
        row["median_perturbation"] = attack.median_norm
        median = "n/a" if attack.median_norm is None else f"{attack.median_norm:.4g}"
        notes.append(f"minimal-perturbation attack, projected onto the {threat} ball; median unprojected "
                     f"{threat.norm} norm {median}")
    if attack.nonfinite:
        row["nonfinite_samples"] = attack.nonfinite
        notes.append(attack.nonfinite_note())
        warn(f"model {name} / attack {attack_spec.text}: {attack.nonfinite_note()}")
    if notes:
        row["note"] = "; ".join(notes)
    return row, correct


def check_same_dataset(models: dict, dataset: str):
    for name, (_, spec) in models.items():
        if spec and spec.get("dataset") not in (None, dataset):
            raise AdvplugError(f"model {name} was trained on {spec['dataset']}, not {dataset}; "
                               f"pass --dataset {spec['dataset']} or evaluate it separately")


def model_labels(paths) -> list[str]:
    """Unique table labels for model files: the shortest path suffix (at least
    ``parent/name``) that tells each file from the others. The same file given twice
    is one error."""
    resolved = [Path(p).resolve() for p in paths]
    seen = {}
    for given, path in zip(paths, resolved):
        if path in seen:
            raise AdvplugError(f"model file {given} is given twice (also as {seen[path]}); give each model once")
        seen[path] = given
    parts = [path.parts for path in resolved]
    labels = []
    for i, own in enumerate(parts):
        k = min(2, len(own))
        while k < len(own) and any(other[-k:] == own[-k:] for j, other in enumerate(parts) if j != i):
            k += 1
        labels.append("/".join(own[-k:]))
    return labels


def run_evaluation(models: dict, dataset: str | None = None, attacks: str | None = None, norm: str = "Linf",
                   eps=None, test_subset: int | None = None, seed: int = 42, data_root=None,
                   verify_checksums: bool = True, batch_size: int = 256, device: str = "cpu",
                   sanity: bool = False, sanity_samples: int = 200, out=None, registry=None,
                   progress: bool = False) -> dict:
    """Evaluate ``{name: (model, spec)}`` on one identical test subset; write reports to ``out``.

    With ``out``, every finished (model, attack) result is kept in ``out/results/`` as it
    completes; a rerun (of a killed evaluation, or with a model or attack added) reuses
    those whose model, attack, threat, test images, seed and batch size all match."""
    from . import manifest
    from .host import get_host
    from .report import interval_note, reused_note, text_table, write_reports
    from .result_store import ResultStore
    from .sanity import run_sanity_checks
    from .threat import threat_warning

    registry = registry or get_host().registry
    if dataset is None:
        found = {spec.get("dataset") for _, spec in models.values() if spec}
        if len(found) != 1 or None in found:
            raise AdvplugError("pass --dataset: it cannot be read from the model files")
        dataset = found.pop()
    check_same_dataset(models, dataset)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AdvplugError(f"--batch-size must be a whole number >= 1, got {batch_size!r}")
    spec = registry.get("datasets", dataset)
    threat = Threat(norm, spec.default_eps(parse_norm(norm)) if eps is None else eps)
    warning = threat_warning(threat, spec)
    if warning:
        warn(warning)
    attacks = attacks or default_attacks(dataset)
    attack_specs = resolve_attacks(registry, attacks, threat)  # bad names or parameters fail before any work
    test = load_test_set(spec, test_subset, seed, data_root=data_root, verify_checksums=verify_checksums)
    store = ResultStore(out) if out else None
    results = {}
    for name, (model, model_spec) in models.items():
        results[name] = evaluate_model(model, test, attack_specs, threat, registry, batch_size, device, seed,
                                       progress, name=name, spec=model_spec, store=store)
        if sanity:
            results[name]["sanity"] = run_sanity_checks(model, test, threat, registry, device, sanity_samples,
                                                        batch_size)
    meta = {"dataset": dataset, "threat": {"norm": threat.norm, "eps": threat.eps}, "attacks": attacks,
            "samples": len(test.y), "seed": seed, "batch_size": batch_size,
            "test_indices": test.indices.tolist(), "versions": manifest.versions(), "time": manifest.now()}
    reused = {name: {row["attack"]: row["reused_from"] for row in res["attacks"] if row.get("reused_from")}
              for name, res in results.items()}
    if any(reused.values()):
        meta["reused"] = {name: attacks for name, attacks in reused.items() if attacks}
    print(text_table(results))
    print(interval_note(len(test.y)))
    for name, res in results.items():
        for row in res["attacks"]:
            if row.get("note"):
                print(f"note: {name} / {row['attack']}: {row['note']}")
        for check in res.get("sanity", []):
            status = "ok  " if check["passed"] else "WARN"
            print(f"sanity {status} {name}: {check['check']}  {check['values']}")
    note = reused_note(meta)
    if note:
        print(note)
    if out:
        json_path, md_path = write_reports(out, results, meta)
        print(f"written: {json_path}, {md_path}")
    return {"meta": meta, "results": results}
