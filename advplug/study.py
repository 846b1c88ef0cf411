"""Studies: train several variants with identical settings and seed, evaluate them on one
identical test subset, and write one comparison table (Markdown + JSON) and a plot.

A study is a dict ``{label: config overrides}`` on top of a shared base config. Each variant
trains into ``<out>/runs/<label>``; a variant whose run there was trained with the same
settings is reused, so an interrupted study continues where it stopped (and an interrupted
variant resumes from its checkpoint); a run there with other settings is refused, with the
difference listed, unless ``--overwrite``. Each (model, attack) result is reused while the
weights, the attack and the test images are unchanged, so a variant added later is the only
one evaluated.
Training time is the sum of the epochs' training time (the per-epoch monitor excluded), so
methods compare on what they cost to train.

With ``ray=`` (``--ray``) the runs to train go out as Ray tasks, side by side, instead of one
after the other; what is trained, reused or resumed is decided the same way
(:func:`plan_run`), and everything after training (evaluation, table) runs here as before.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .config import make_config
from .errors import AdvplugError
from .params import split_spec_list
from .report import reused_note

FAST_AT_TRAINERS = "fgsm-rs,fgsm-sdi,pgd-at:steps=10"
FAST_AT_ATTACKS = "pgd:steps=10,pgd:steps=20,pgd:steps=50,cw,apgd,autoattack"
MIX_RATIOS = "10:90,30:70,50:50,70:30,90:10"
#: the seed study's MNIST protocol (FGSM, PGD-20, CW, DeepFool; minimal-perturbation attacks
#: projected onto the ε-ball) plus AutoAttack
MIX_ATTACKS = "fgsm,pgd:steps=20,cw:steps=30,deepfool,autoattack"
BASELINE = "clean"
VARIANT_ATTACKS = "pgd:steps=20,autoattack"


def label_for(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", spec.replace(":", "_")).strip("_")


def trainer_variants(trainers: str) -> dict[str, dict]:
    """'fgsm-rs,pgd-at:steps=10' -> {label: {"trainer": ..., "trainer_params": ...}}."""
    from .params import parse_spec

    variants = {}
    for spec in split_spec_list(trainers):
        name, params = parse_spec(spec)
        variants[label_for(spec)] = {"trainer": name, "trainer_params": params}
    if not variants:
        raise AdvplugError("--trainers is empty; e.g. --trainers fgsm-rs,fgsm-sdi,pgd-at:steps=10")
    return variants


def ratio_variants(ratios: str, pool: str | None = None) -> dict[str, dict]:
    """'10:90,50:50' -> a standard-training baseline ``clean`` and one ``mixed-ratio``
    sampler variant per clean:adversarial ratio (``pool``: the sampler's attacks)."""
    variants = {BASELINE: {"trainer": "standard", "trainer_params": {}, "sampler": None, "sampler_params": {}}}
    for ratio in (r.strip() for r in ratios.split(",")):
        if not ratio:
            continue
        parts = [p.strip() for p in ratio.split(":")]
        if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[1]) == 0:
            raise AdvplugError(f"--ratios: {ratio!r} is not clean:adversarial in whole numbers with some "
                               f"adversarial share, e.g. --ratios {MIX_RATIOS}")
        params = {"ratio": f"{parts[0]}:{parts[1]}"}
        if pool:
            params["attacks"] = pool
        variants[f"mix_{parts[0]}-{parts[1]}"] = {"trainer": "standard", "trainer_params": {},
                                                  "sampler": "mixed-ratio", "sampler_params": params}
    if len(variants) == 1:
        raise AdvplugError(f"--ratios is empty; e.g. --ratios {MIX_RATIOS}")
    return variants


def file_variants(path) -> tuple[dict, dict[str, dict]]:
    """A study file: TrainConfig keys shared by every variant at the top level (or
    ``config = "other.toml"`` to start from), and one ``[variants.<label>]`` table of
    config overrides per variant; the first variant is the reference. -> (base, variants)."""
    from .config import read_config_file

    path = Path(path)
    data = read_config_file(path)
    variants = data.pop("variants", None)
    if not isinstance(variants, dict) or not variants or not all(isinstance(v, dict) for v in variants.values()):
        raise AdvplugError(f"{path}: give at least one [variants.<label>] table of config overrides, e.g.\n"
                           f"[variants.relu]\n[variants.silu]\ntransforms = [\"smooth-activation:fn=silu\"]")
    bad = [label for label in variants if label != label_for(label)]
    if bad:
        raise AdvplugError(f"{path}: variant labels become directory names; use letters, digits and "
                           f"'_.=+-' only (not {', '.join(map(repr, bad))})")
    return data, variants


#: config keys that do not change what is trained: a run is reused (or resumed) when every
#: other key equals the requested one (the study evaluates every model itself)
NOT_TRAINING_KEYS = ("test_subset", "eval_steps", "eval_seed", "progress", "plot", "out", "device", "data_root",
                     "download", "keep_checkpoints")


def training_settings(config: dict) -> dict:
    """A run's resolved config without the keys that do not change what is trained; keys
    added to TrainConfig after the run was trained count as their defaults."""
    from .config import TrainConfig

    return {k: v for k, v in {**TrainConfig().to_dict(), **config}.items() if k not in NOT_TRAINING_KEYS}


def settings_difference(saved: dict, wanted: dict) -> list[str]:
    """'epochs 2 -> 3' for every training setting that differs."""
    saved, wanted = training_settings(saved), training_settings(wanted)
    return [f"{key} {saved.get(key)!r} -> {wanted.get(key)!r}" for key in sorted(set(saved) | set(wanted))
            if saved.get(key) != wanted.get(key)]


def plan_run(config) -> tuple[str, str]:
    """What a study does with the run directory ``config.out``, and the line that says so:
    ``("retrain", ...)`` for a run there that :func:`_conflict` finds (other settings;
    ``run_study`` has refused those already unless ``--overwrite``), ``("reuse", ...)`` for a
    finished run, ``("resume", ...)`` for an interrupted one, else ``("train", ...)``."""
    run_dir = Path(config.out)
    conflict = _conflict(config)
    if conflict:
        return "retrain", f"retraining {run_dir} (--overwrite; {conflict})"
    if (run_dir / "model.pt").is_file() and (run_dir / "final_eval.json").is_file():
        return "reuse", f"reusing the finished run in {run_dir}"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "resume", f"resuming {run_dir}"
    return "train", f"training into {run_dir}"  # nothing of value there (no model, no checkpoint)


def _execute_run(action: str, config, host=None, **overrides) -> None:
    """Carry out :func:`plan_run`'s ``action`` for ``config`` (``overrides``: keys a resume
    may change, such as ``device``)."""
    from .engine import train

    if action == "resume":
        train(resume=config["out"] if isinstance(config, dict) else config.out, host=host, **overrides)
    elif action in ("train", "retrain"):
        train(config, host=host, overwrite=True, **overrides)


def _history(config) -> list[dict]:
    lines = (Path(config.out) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _train_variant(label: str, config, host=None, prefix: str = "study") -> list[dict]:
    """Train one variant into ``config.out``, or reuse / resume the run there, as
    :func:`plan_run` decides; its per-epoch metrics."""
    action, what = plan_run(config)
    print(f"[{prefix}] {label}: {what}", flush=True)
    _execute_run(action, config, host)
    return _history(config)


def train_runs(configs: dict, host=None, *, ray: str | None = None, ray_cpus: float = 1, ray_gpus: float = 0,
               log_dir=None, prefix: str = "study") -> dict[str, list[dict]]:
    """Train (or reuse, or resume) every run of ``configs`` {label: TrainConfig}, as
    :func:`plan_run` decides for each; -> {label: per-epoch metrics}. Without ``ray``, one
    after the other here; with ``ray`` (a Ray address: ``"local"`` starts a local instance,
    ``"auto"`` or ``"ray://host:10001"`` a cluster's; an initialized Ray is used as it is),
    each run to train is a Ray task of ``ray_cpus`` CPUs (its torch threads) and ``ray_gpus``
    GPUs, its console output in ``log_dir/<label>.log``."""
    if ray is None:
        return {label: _train_variant(label, cfg, host, prefix=prefix) for label, cfg in configs.items()}
    plan = {label: plan_run(cfg) for label, cfg in configs.items()}
    jobs = {label: (action, configs[label]) for label, (action, _) in plan.items() if action != "reuse"}
    from .ray_tasks import connect_ray, import_ray, run_on_ray

    ray_module = import_ray()
    started = connect_ray(ray_module, ray) if jobs else False  # Ray only when something trains
    try:
        for label, (action, what) in plan.items():
            print(f"[{prefix}] {label}: {what}" + ("" if action == "reuse" else " (Ray task)"), flush=True)
        if jobs:
            run_on_ray(ray_module, jobs, ray_cpus, ray_gpus, Path(log_dir or "."), prefix)
    finally:
        if started:
            ray_module.shutdown()
    return {label: _history(cfg) for label, cfg in configs.items()}


def _conflict(config) -> str | None:
    """Why the run in ``config.out`` cannot be reused or resumed for ``config``: its training
    settings differ ('epochs 1 -> 2; ...'), or it has a model or checkpoint but no readable
    config.json; None when there is no run or it matches."""
    from .rundir import run_files

    found = run_files(config.out)
    if not found:
        return None
    saved = _saved_config(Path(config.out))
    if saved is None:
        return f"{', '.join(found[:2])} without a readable config.json, so how it was trained cannot be checked"
    return "; ".join(settings_difference(saved, config.to_dict())) or None


def _refuse_other_settings(configs: dict) -> None:
    """One error listing every variant whose directory holds a run with other settings."""
    conflicts = [f"{label} ({why})" for label, cfg in configs.items() if (why := _conflict(cfg))]
    if conflicts:
        out = Path(next(iter(configs.values())).out).parent.parent
        raise AdvplugError(f"{out} holds runs trained with other settings: {', '.join(conflicts)}; use another "
                           f"--out for the new settings, or --overwrite to retrain them")


def _saved_config(run_dir: Path) -> dict | None:
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def run_study(name: str, variants: dict[str, dict], base: dict, *, attacks: str, out, test_subset=None,
              eval_seed: int = 42, batch_size: int = 256, host=None, progress: bool = False,
              clean_drop_warning: float | None = None, overwrite: bool = False, ray: str | None = None,
              ray_cpus: float = 1, ray_gpus: float = 0) -> dict:
    """Train every variant, evaluate all on the same test images, write ``study.{md,json,png}``.

    The first variant is the reference for time ratios and for ``clean_drop_warning``: a
    warning for every model whose clean accuracy is more than that many points below it.
    A variant's finished run is reused (an interrupted one resumed) only when it was
    trained with the same settings; runs with other settings are refused, all listed,
    before anything trains (``overwrite``: they are retrained).

    ``ray``: train the runs as Ray tasks (see :func:`train_runs`: ``"local"``, ``"auto"``,
    ``"ray://HEAD:10001"``), ``ray_cpus`` CPUs (torch threads) and ``ray_gpus`` GPUs each; the
    tasks load the installed plugins themselves (``host`` serves the evaluation here)."""
    from .evaluation import resolve_attacks
    from .host import get_host
    from .rundir import check_output_dir

    out = check_output_dir(out)
    registry = (host or get_host()).registry
    configs = {label: make_config({**base, **overrides, "out": str(out / "runs" / label)}, registry=registry)
               for label, overrides in variants.items()}  # every config checked before any training
    for cfg in configs.values():
        registry.get("trainers", cfg.trainer)
        registry.get("models", cfg.model)
        if cfg.sampler:
            registry.get("samplers", cfg.sampler)
        resolve_attacks(registry, attacks, cfg.threat)  # a bad attack fails now, not after training
    if ray is not None:  # before anything trains
        from .ray_tasks import check_ray_resources, import_ray

        check_ray_resources(configs, ray_cpus, ray_gpus)
        import_ray()
    if not overwrite:
        _refuse_other_settings(configs)
    histories = train_runs(configs, host, ray=ray, ray_cpus=ray_cpus, ray_gpus=ray_gpus, log_dir=out / "logs")
    any_cfg = next(iter(configs.values()))
    evaluation = _evaluate_variants(configs, out / "eval", attacks=attacks, test_subset=test_subset,
                                    eval_seed=eval_seed, batch_size=batch_size, progress=progress)
    reference = next(iter(variants))
    rows = []
    for label, history in histories.items():
        times = sorted(m["epoch_time_s"] for m in history)
        train_s = sum(times)
        res, cfg = evaluation["results"][label], configs[label]
        robust = {r["attack"]: r["robust_acc"] for r in res["attacks"]}
        rows.append({"method": label, "trainer": cfg.trainer, "trainer_params": cfg.trainer_params,
                     "sampler": cfg.sampler, "sampler_params": cfg.sampler_params, "clean_acc": res["clean_acc"],
                     "robust": robust, "mean_robust_acc": sum(robust.values()) / len(robust) if robust else None,
                     "attack_gap": max(robust.values()) - min(robust.values()) if robust else None,
                     "worst_case_acc": res["worst_case_acc"], "epochs": len(history), "train_s": train_s,
                     "epoch_s": train_s / max(len(history), 1), "epoch_times_s": [m["epoch_time_s"] for m in history],
                     "median_epoch_s": (times[(len(times) - 1) // 2] + times[len(times) // 2]) / 2 if times else 0.0,
                     "final_heldout_pgd_acc": history[-1].get("monitor_heldout_pgd_acc") if history else None})
    # the median epoch: one epoch slowed by another process on a shared machine does not move it
    ref_epoch = next(r["median_epoch_s"] for r in rows if r["method"] == reference)
    ref_train = next(r["train_s"] for r in rows if r["method"] == reference)
    for row in rows:
        row["epoch_time_ratio"] = row["median_epoch_s"] / ref_epoch if ref_epoch else None
        row["train_time_ratio"] = row["train_s"] / ref_train if ref_train else None
    warnings = _clean_drop_warnings(rows, reference, clean_drop_warning)
    for line in warnings:
        print(f"[study] warning: {line}", flush=True)
    summary = {"study": name, "reference": reference, "base_config": {k: v for k, v in any_cfg.to_dict().items()
                                                                       if k not in ("trainer", "trainer_params",
                                                                                    "out")},
               "attacks": attacks, "evaluation": {k: v for k, v in evaluation["meta"].items()
                                                  if k != "test_indices"},
               "rows": rows, "warnings": warnings}
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "study.md").write_text(markdown(summary) + "\n")
    plot_study(summary, out / "study.png")
    print(markdown(summary))
    print(f"written: {out / 'study.md'}, {out / 'study.json'}, {out / 'study.png'}")
    return summary


def _clean_drop_warnings(rows: list[dict], reference: str, points: float | None) -> list[str]:
    if points is None:
        return []
    ref = next(r["clean_acc"] for r in rows if r["method"] == reference)
    return [f"{r['method']}: clean accuracy {r['clean_acc']:.2f}% is {ref - r['clean_acc']:.2f} points below "
            f"{reference}'s {ref:.2f}% (more than {points:g})" for r in rows
            if r["method"] != reference and ref - r["clean_acc"] > points]


def _evaluate_variants(configs: dict, out: Path, *, attacks, test_subset, eval_seed, batch_size, progress) -> dict:
    """Evaluate the study's models on one test subset. Each (model, attack) result is kept
    in ``out/results/`` and reused while the model's weights, the attack and its parameters,
    the threat, the test images, seed and batch size are unchanged, so a variant added to a
    study is the only one evaluated, and a killed evaluation goes on where it stopped."""
    from .evaluation import run_evaluation
    from .modelio import load_model_and_spec

    cfg = next(iter(configs.values()))
    models = {label: load_model_and_spec(Path(c.out) / "model.pt", "cpu") for label, c in configs.items()}
    return run_evaluation(models, dataset=cfg.dataset, attacks=attacks, norm=cfg.norm, eps=cfg.eps,
                          test_subset=test_subset, seed=eval_seed, data_root=cfg.data_root,
                          verify_checksums=cfg.verify_checksums, batch_size=batch_size, progress=progress, out=out)


def attack_columns(rows: list[dict]) -> list[str]:
    """Every attack any variant met, in order: a stochastic model also meets EOT attacks
    the others do not (their cells are "-")."""
    columns = []
    for r in rows:
        columns += [a for a in r["robust"] if a not in columns]
    return columns


def markdown(summary: dict) -> str:
    rows = summary["rows"]
    attacks = attack_columns(rows)
    head = ["method", "clean", *attacks, "mean", "worst", "gap", "epochs", "train s", "median s/epoch",
            f"epoch time vs {summary['reference']}", f"train time vs {summary['reference']}"]
    lines = [f"# Study: {summary['study']}", "",
             _setting_line(summary), "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        cells = [r["method"], f"{r['clean_acc']:.2f}", *[_pct(r["robust"].get(a)) for a in attacks],
                 _pct(r["mean_robust_acc"]), f"{r['worst_case_acc']:.2f}", _pct(r["attack_gap"]),
                 str(r["epochs"]), f"{r['train_s']:.1f}", f"{r['median_epoch_s']:.1f}",
                 f"{r['epoch_time_ratio']:.2f}x", f"{r['train_time_ratio']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    samples = summary.get("evaluation", {}).get("samples")
    if samples:
        from .report import interval_note

        lines += ["", interval_note(samples).replace(" (95% Wilson interval; each number's interval is in "
                                                     "eval.json)", " (95% Wilson interval)")]
    lines += ["", *[f"**Warning:** {w}" for w in summary.get("warnings", [])]]
    return "\n".join(lines).rstrip()


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _setting_line(summary: dict) -> str:
    cfg, ev = summary["base_config"], summary["evaluation"]
    return (f"{cfg['dataset']} / {cfg['model']}, {cfg['norm']} ε = {cfg['eps']:.4g}, {cfg['epochs']} epochs, "
            f"{cfg['train_subset'] or 'all'} training images, {cfg['optimizer']} lr {cfg['lr']} "
            f"({cfg['lr_schedule']}), seed {cfg['seed']}; evaluated on the same {ev['samples']} test images "
            f"(eval seed {ev['seed']}). Accuracies in %; mean = mean over the attacks; worst = per-sample "
            f"worst case over the attacks; gap = best minus worst attack accuracy; training time excludes the "
            f"per-epoch monitor; epoch-time ratios use the median epoch. {reused_note(ev)}").rstrip()


def plot_study(summary: dict, path) -> Path:
    from .plots import _pyplot

    plt = _pyplot()
    rows = summary["rows"]
    attacks = attack_columns(rows)
    columns = ["clean", *attacks, "worst"] if rows else []
    fig, (acc_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        values = [r["clean_acc"], *[r["robust"].get(a, float("nan")) for a in attacks], r["worst_case_acc"]]
        acc_ax.bar([c + i * width for c in range(len(columns))], values, width, label=r["method"])
    acc_ax.set_xticks([c + width * (len(rows) - 1) / 2 for c in range(len(columns))])
    acc_ax.set_xticklabels(columns, rotation=20, ha="right", fontsize=8)
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_ylim(0, 100)
    acc_ax.legend(fontsize=8)
    acc_ax.set_title(summary["study"])
    time_ax.bar([r["method"] for r in rows], [r["median_epoch_s"] for r in rows], color="gray")
    time_ax.set_ylabel("training s / epoch (median)")
    time_ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
