"""Robustness evaluation: every model on the identical test samples, fresh adversarial
examples per attack, per-sample worst case over all attacks.

``advplug.evaluate(models, ...)`` is :func:`evaluate`, the Python API of ``advplug eval``:
the same code path, the same numbers.

No number is printed wrong without a word:

* a model whose logits hold NaN or inf is one error (any accuracy from it is meaningless);
* an attack's outputs with NaN or inf fall back to the clean input, are counted, and the
  report says how many (:class:`advplug.attacks.base.CheckedAttack`);
* every parameter and buffer of the model is fingerprinted before and after each attack:
  an attack that changed them is one error naming it (it would contaminate every attack
  after it);
* with an output folder, each finished (model, attack) result is written the moment it
  completes and reused on a rerun only when model, attack (all parameters), threat, test
  images, seed and batch size all match (:mod:`advplug.result_store`);
* ``amp="bf16"`` (``--amp``) runs every forward pass -- clean predictions and every
  attack's forward and backward passes -- under ``torch.autocast`` (:mod:`advplug.precision`,
  one wrapper around the model that every attack sees), logits in float32; the report says
  so, and the precision is part of a stored result's key.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .attacks.base import build_attack, eval_frozen, resolve_attack, split_attack_list
from .distributed import SINGLE
from .errors import AdvplugError, warn
from .fingerprint import changed_tensors, model_identity, state_digests
from .precision import precision_label, precision_note, with_autocast
from .sanity import run_sanity_checks
from .stochastic import is_stochastic
# the test images and per-sample scoring live in advplug.testset (shared with advplug.sanity,
# which imports it, not this module); re-exported here (see __all__) for existing callers
from .testset import TestSet, load_test_set, nonfinite_logits_error, predictions_correct
from .threat import Threat, parse_norm

#: the seed study's MNIST protocol: FGSM and 20-step PGD at Linf ε = 0.3, CW-L2 with 30
#: iterations, DeepFool (minimal-perturbation attacks projected onto the ε-ball)
MNIST_PROTOCOL = "fgsm,pgd:steps=20,cw:steps=30,deepfool"
DEFAULT_ATTACKS = "fgsm,pgd:steps=20,apgd"
#: libraries whose versions are part of a stored result's key
RESULT_VERSIONS = ("advplug", "torch", "torchattacks", "adversarial-robustness-toolbox", "pyautoattack")

__all__ = ["DEFAULT_ATTACKS", "MNIST_PROTOCOL", "AttackSpec", "TestSet", "check_same_dataset", "default_attacks",
           "evaluate", "evaluate_model", "load_test_set", "model_labels", "nonfinite_logits_error",
           "predictions_correct", "resolve_attacks", "run_evaluation"]


def default_attacks(dataset: str) -> str:
    return MNIST_PROTOCOL if dataset == "mnist" else DEFAULT_ATTACKS


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


def evaluate_model(model, test: TestSet, attacks, threat: Threat, registry, batch_size=256,
                   device="cpu", seed=42, progress=False, *, name="model", spec=None, store=None,
                   verbose=True, amp=None, dist=SINGLE) -> dict:
    """Clean and per-attack robust accuracy, worst case, mean, gap and time per attack.

    ``attacks`` is a comma-separated string or a list of :class:`AttackSpec`; ``store`` a
    :class:`advplug.result_store.ResultStore` to write each finished result to and reuse
    matching ones from; ``name`` and ``spec`` name and describe the model; ``verbose=False``
    leaves out the line saying a stored result is reused. ``amp`` (``"bf16"``, ``"fp16"``;
    None: fp32): every forward pass, the attacks' included, under autocast
    (:func:`advplug.precision.with_autocast`); the model's identity stays that of ``model``."""
    if isinstance(attacks, str):
        attacks = resolve_attacks(registry, attacks, threat)
    model = model.to(device)
    with eval_frozen(model):  # attacks need input gradients only; leave none on the model
        # the one model every forward pass goes through (clean predictions and every attack):
        # ``model`` itself, or under --amp its autocast wrapper (made in eval mode, as ``model`` is now)
        net = with_autocast(model, amp, device)
        return _evaluate(model, net, test, attacks, threat, registry, batch_size, device, seed, progress, name,
                         spec, store, verbose, amp, dist)


def _evaluate(model, net, test, attacks, threat, registry, batch_size, device, seed, progress, name, spec, store,
              verbose, amp, dist):
    n = len(test.y)
    digests = state_digests(model)  # fingerprints and identity: the unwrapped model's
    identity = model_identity(model, digests, spec)
    clean = predictions_correct(net, test, batch_size, device, what=f"model {name} on clean test images", dist=dist)
    rows, worst = [], clean.clone()
    libraries = _library_versions() if store is not None else None
    for attack_spec in attacks:
        key = _result_key(identity, attack_spec, threat, test, seed, batch_size, libraries, amp)
        # under torchrun rank 0 reads and writes the stored results; every process follows its choice
        stored = dist.on_main(lambda: store.get(key) if store is not None else None)
        if stored is not None:
            row, correct, when = stored
            row = {**row, "reused_from": when}
            if verbose:
                print(f"[eval] {name} / {attack_spec.text}: reusing the result computed {when} "
                      f"({store.path(key)})", flush=True)
        else:
            row, correct = _attack_row(model, net, test, attack_spec, threat, registry, batch_size, device, seed,
                                       progress, name, digests, dist)
            if store is not None and dist.is_main:
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
        "precision": precision_label(amp),
    }


def _result_key(identity, attack_spec, threat, test, seed, batch_size, libraries, amp=None) -> dict:
    # "seeding": each batch's attack randomness from (seed, batch number), so that a sharded
    # evaluation is the single-process one (results stored before that drew one stream per attack)
    key = {"model": identity, "attack": attack_spec.identity, "threat": {"norm": threat.norm, "eps": threat.eps},
           "test": test.identity, "seed": seed, "batch_size": batch_size, "versions": libraries,
           "seeding": "per-batch"}
    if precision_label(amp) != "fp32":  # an autocast result never stands in for an fp32 one (fp32 keys as before)
        key["precision"] = precision_label(amp)
    return key


def _library_versions() -> dict:
    """The versions of the libraries that compute a result (part of its stored key)."""
    from .manifest import versions

    known = versions()
    return {k: known.get(k) for k in RESULT_VERSIONS}


def _attack_row(model, net, test, attack_spec, threat, registry, batch_size, device, seed, progress, name,
                digests, dist=SINGLE):
    """Run one attack on every test image -> (report row, per-sample correct flags). The
    attack sees ``net`` (``model``, or its autocast wrapper); ``model``'s fingerprints are checked.
    Every batch's attack randomness comes from (``seed``, batch number): every model meets
    the same, and under torchrun (``dist``: each process attacks its share of the batches)
    the result is the single-process one."""
    torch.manual_seed(seed)
    attack = build_attack(registry, attack_spec.text, net, threat)
    start = time.perf_counter()
    correct = predictions_correct(net, test, batch_size, device, attack, desc=attack.name, progress=progress,
                                  what=f"model {name} under attack {attack_spec.text}", seed=seed, dist=dist)
    attack.gather(dist)
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


#: the EOT attack added for a stochastic model (``{n}``: gradient samples per step)
EOT_PGD = "eotpgd:steps=20,eot_iter={n}"
#: AutoAttack's version for randomized defenses (APGD-CE and APGD-DLR with EOT)
EOT_AUTOATTACK = "autoattack:version=rand"


def is_eot(attack: AttackSpec) -> bool:
    """An attack that averages gradients over the model's randomness (expectation over
    transformation): EOT-PGD, or AutoAttack's ``rand`` version."""
    return attack.name == "torchattacks:eotpgd" or attack.params.get("version") == "rand"


def eot_attacks(registry, attacks: list, threat: Threat, samples: int) -> list:
    """The EOT attacks a stochastic model meets besides ``attacks``: EOT-PGD with ``samples``
    gradient samples per step (unless one is given), and AutoAttack ``rand`` where the list
    holds another AutoAttack version."""
    extra = []
    if not any(a.name == "torchattacks:eotpgd" for a in attacks):
        extra.append(EOT_PGD.format(n=samples))
    autoattacks = [a for a in attacks if a.name.endswith("autoattack")]
    if autoattacks and not any(map(is_eot, autoattacks)):
        extra.append(EOT_AUTOATTACK)
    return [s for text in extra for s in resolve_attacks(registry, text, threat)]


def stochastic_note(name: str, attacks: list) -> str:
    """What the report says of a stochastic model: whether EOT attacks met it."""
    eot = [a.text for a in attacks if is_eot(a)]
    if eot:
        return (f"model {name} is stochastic (two forward passes of the same batch differ): attacked with expectation "
                f"over transformation too ({', '.join(eot)}); single-shot attacks can be fooled by its randomness, "
                f"compare their columns with the EOT ones; clean and robust accuracies are one random draw each")
    return (f"model {name} is stochastic (two forward passes of the same batch differ) but only single-shot attacks "
            f"met it: its robust accuracies may be overestimated; drop --no-eot or add eotpgd / "
            f"autoattack:version=rand")


def run_evaluation(models: dict, dataset: str | None = None, attacks: str | None = None, norm: str = "Linf",
                   eps=None, test_subset: int | None = None, seed: int = 42, data_root=None,
                   verify_checksums: bool = True, batch_size: int = 256, device: str = "cpu",
                   sanity: bool = False, sanity_samples: int = 200, out=None, registry=None,
                   progress: bool = False, verbose: bool = True, eot_samples: int | None = 20,
                   amp: str | None = None, dist=SINGLE) -> dict:
    """Evaluate ``{name: (model, spec)}`` on one identical test subset; write reports to ``out``.

    Prints the table, its notes and where the reports went (what ``advplug eval`` shows);
    ``verbose=False`` prints none of it (warnings still go to stderr).

    A stochastic model (:func:`advplug.stochastic.is_stochastic` on the first test batch)
    also meets EOT attacks (:func:`eot_attacks`, ``eot_samples`` gradient samples per
    step; ``None``: the given attacks only, with a warning) and the report says so.

    With ``out``, every finished (model, attack) result is kept in ``out/results/`` as it
    completes; a rerun (of a killed evaluation, or with a model or attack added) reuses
    those whose model, attack, threat, test images, seed and batch size all match.

    ``amp`` (``"bf16"``; on CUDA also ``"fp16"``; None: fp32): the models' forward passes,
    the attacks' included, under ``torch.autocast`` of ``device``
    (:mod:`advplug.precision`); the report says so and stored results are kept apart by
    precision. fp16 on the CPU is one error, before any work.

    ``dist`` (:mod:`advplug.distributed`, under torchrun): every process attacks its share
    of the test batches and the per-sample results are gathered; rank 0 alone prints,
    runs the sanity checks and writes (the numbers are those of one process)."""
    from . import manifest
    from .host import get_host
    from .report import interval_note, reused_note, text_table, write_reports
    from .result_store import ResultStore
    from .threat import threat_warning

    registry = registry or get_host().registry
    amp_note = precision_note(amp, device)  # a bad --amp (fp16 on the CPU) fails before any work
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
    if eot_samples is not None and (isinstance(eot_samples, bool) or not isinstance(eot_samples, int)
                                    or eot_samples < 1):
        raise AdvplugError(f"--eot-samples must be a whole number >= 1, got {eot_samples!r}")
    verbose = verbose and dist.is_main
    store = ResultStore(out) if out and dist.is_main else None
    results = {}
    probe = test.x[:batch_size].to(device).float().div(255)
    for name, (model, model_spec) in models.items():
        stochastic = dist.on_main(is_stochastic, with_autocast(model.to(device), amp, device), probe)
        model_attacks = attack_specs
        if stochastic and eot_samples is not None:
            model_attacks = attack_specs + eot_attacks(registry, attack_specs, threat, eot_samples)
        results[name] = evaluate_model(model, test, model_attacks, threat, registry, batch_size, device, seed,
                                       progress, name=name, spec=model_spec, store=store, verbose=verbose, amp=amp,
                                       dist=dist)
        results[name]["stochastic"] = stochastic
        if stochastic:
            results[name]["stochastic_note"] = note = stochastic_note(name, model_attacks)
            if not any(is_eot(a) for a in model_attacks):
                warn(note)
        if sanity and dist.is_main:
            results[name]["sanity"] = run_sanity_checks(with_autocast(model, amp, device), test, threat, registry,
                                                        device, sanity_samples, batch_size)
    meta = {"dataset": dataset, "threat": {"norm": threat.norm, "eps": threat.eps}, "attacks": attacks,
            "samples": len(test.y), "seed": seed, "batch_size": batch_size, "precision": precision_label(amp),
            "test_indices": test.indices.tolist(), "versions": manifest.versions(), "time": manifest.now()}
    if amp_note:
        meta["precision_note"] = amp_note
    reused = {name: {row["attack"]: row["reused_from"] for row in res["attacks"] if row.get("reused_from")}
              for name, res in results.items()}
    if any(reused.values()):
        meta["reused"] = {name: attacks for name, attacks in reused.items() if attacks}
    if verbose:
        print(text_table(results))
        print(interval_note(len(test.y)))
        if amp_note:
            print(f"note: {amp_note}")
        for name, res in results.items():
            for row in res["attacks"]:
                if row.get("note"):
                    print(f"note: {name} / {row['attack']}: {row['note']}")
            if res.get("stochastic_note"):
                print(f"note: {res['stochastic_note']}")
            for check in res.get("sanity", []):
                status = "ok  " if check["passed"] else "WARN"
                print(f"sanity {status} {name}: {check['check']}  {check['values']}")
        note = reused_note(meta)
        if note:
            print(note)
    if out and dist.is_main:
        json_path, md_path = write_reports(out, results, meta)
        if verbose:
            print(f"written: {json_path}, {md_path}")
    return {"meta": meta, "results": results}


def evaluate(models, *, dataset: str | None = None, attacks: str | None = None, eps=None, norm: str = "Linf",
             test_subset: int | None = None, seed: int = 42, batch_size: int = 256, device=None, data_root=None,
             verify_checksums: bool = True, sanity: bool = False, sanity_samples: int = 200, out=None,
             verbose: bool = False, progress: bool = False, registry=None, eot_samples: int | None = 20,
             amp: str | None = None) -> dict:
    """Evaluate models against attacks on one identical test subset: what ``advplug eval``
    computes, through the same code (:func:`run_evaluation`), so the numbers are the same.

    ``models``: a model file saved by advplug (``model.pt`` or a checkpoint), a list of them
    (labelled as ``advplug eval`` labels them, e.g. ``"pgd/model.pt"``), one ``nn.Module``
    (labelled ``"model"``), or a dict label -> file or ``nn.Module``. A module is evaluated
    as given (moved to ``device``; its mode and ``requires_grad`` flags are restored).
    ``dataset``: default the one the model files were trained on (required with modules).
    ``attacks``: comma-separated specs, e.g. ``"fgsm,pgd:steps=20"`` (default: the
    dataset's protocol, as ``advplug eval``). ``eps``: in pixel space, a number or a string
    like ``"8/255"``; default the dataset's for ``norm`` (MNIST Linf 0.3). ``device``:
    default the device of the first module given, else CUDA when available
    (``advplug eval --device auto``). ``out``: a folder for ``eval.json``, ``eval.md`` and
    each finished result, reused on a rerun (default: nothing is written). ``verbose``:
    print the table and its notes as ``advplug eval`` does. ``eot_samples``: a stochastic
    model also meets EOT-PGD with this many gradient samples per step (and AutoAttack
    ``rand`` where AutoAttack is asked for); ``None``: the given attacks only (``--no-eot``).
    ``amp``: ``"bf16"`` (or ``"fp16"`` on CUDA) runs every forward pass, clean and in every
    attack, under ``torch.autocast`` with float32 logits (``advplug eval --amp``); default fp32.

    Returns ``{"meta": ..., "results": ...}``: ``meta`` has ``dataset``, ``threat``,
    ``attacks``, ``samples`` (test images), ``seed``, ``precision`` (``"fp32"``, ``"bf16"``,
    ``"fp16"``) and ``test_indices``;
    ``results[label]`` has ``clean_acc``, ``worst_case_acc`` (per sample, the worst over all
    attacks), ``mean_robust_acc``, ``best_minus_worst``, ``clean_ci95`` and ``attacks``:
    one row per attack with ``attack`` (the spec as given), ``robust_acc``, ``ci95`` (95%
    Wilson interval), ``seconds`` and ``_correct`` (per-sample bool tensor). Accuracies are
    in %. ``advplug.report.text_table(result["results"])`` is the table ``advplug eval``
    prints. Bad input (an unknown attack, parameter or dataset) is one AdvplugError before
    any work."""
    from os import PathLike

    from torch import nn

    from .engine import resolve_device
    from .host import get_host
    from .modelio import load_model_and_spec
    from .report import with_intervals
    from .rundir import check_output_dir

    registry = registry or get_host().registry
    if isinstance(models, (str, PathLike, nn.Module)):
        models = [models]
    if isinstance(models, dict):
        given = list(models.items())
    else:
        given = list(models)
        modules = [m for m in given if isinstance(m, nn.Module)]
        if modules:
            if len(given) > 1:
                raise AdvplugError("give several nn.Module models as a dict label -> model (a list holds files)")
            given = [("model", modules[0])]
        else:
            given = list(zip(model_labels(given), given))
    if not given:
        raise AdvplugError("nothing to evaluate: pass a model file, a list of them, or a dict label -> model")
    if device is None:
        first = next((m for _, m in given if isinstance(m, nn.Module)), None)
        param = next(iter(first.parameters()), None) if first is not None else None
        device = param.device if param is not None else resolve_device("auto")
    else:
        device = resolve_device(str(device))
    precision_note(amp, device)  # a bad amp (fp16 on the CPU) fails before any model is loaded
    loaded = {}
    for label, model in given:
        if isinstance(model, nn.Module):
            loaded[str(label)] = (model, None)
        elif isinstance(model, (str, PathLike)):
            loaded[str(label)] = load_model_and_spec(model, device, registry)
        else:
            raise AdvplugError(f"model {label!r} is a {type(model).__name__}; give a model file or an nn.Module")
    if dataset is None and any(spec is None for _, spec in loaded.values()):
        raise AdvplugError("pass dataset=...: a model given as an nn.Module does not say which dataset it is for")
    if out is not None:
        check_output_dir(out, flag="out")
    result = run_evaluation(loaded, dataset=dataset, attacks=attacks, norm=norm, eps=eps, test_subset=test_subset,
                            seed=seed, data_root=data_root, verify_checksums=verify_checksums,
                            batch_size=batch_size, device=str(device), sanity=sanity,
                            sanity_samples=sanity_samples, out=out, registry=registry, progress=progress,
                            verbose=verbose, eot_samples=eot_samples, amp=amp)
    samples = result["meta"]["samples"]
    result["results"] = {name: with_intervals(res, samples) for name, res in result["results"].items()}
    return result
