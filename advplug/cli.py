"""``advplug`` command line: a thin layer over the Python API."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import AdvplugError, warn
from .params import parse_spec


def _add_train(sub):
    p = sub.add_parser("train", help="train a model (flags override --config)", epilog=_dataset_defaults_text(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", metavar="RUN_DIR_OR_CKPT", help="continue a run exactly where its last checkpoint left it")
    p.add_argument("--trainer", help="trainer, optionally with parameters: pgd-at:steps=7,alpha=0.01")
    p.add_argument("--out", help="output directory (default runs/latest); one that holds a run is refused")
    _add_training_args(p)
    p.set_defaults(func=cmd_train)


def _dataset_defaults_text() -> str:
    """The per-dataset defaults, for --help (where neither --config nor a flag sets them)."""
    from .data import BUILTIN_DATASETS

    lines = ["defaults per dataset (where neither --config nor a flag sets them):"]
    lines += [f"  {name}: {spec.describe_defaults()}" for name, spec in BUILTIN_DATASETS.items()]
    return "\n".join(lines)


def _add_training_args(p):
    """The TrainConfig flags shared by ``train`` and ``study``."""
    p.add_argument("--config", help="TOML or JSON file with TrainConfig keys")
    p.add_argument("--dataset")
    p.add_argument("--model", help="architecture name with parameters, e.g. mnist-cnn, preact-resnet18:width=32")
    p.add_argument("--activation", help="activation of built-in models (relu, gelu, silu, ...)")
    p.add_argument("--schedule", help="attack-parameter schedule with parameters, from a plugin")
    p.add_argument("--sampler", help="batch sampler with parameters, from a plugin (replaces the trainer's attack), "
                                     "e.g. mixed-ratio:ratio=30:70,attacks=fgsm+pgd")
    p.add_argument("--transform", action="append", dest="transforms", help="model transform name:key=value (repeatable)")
    p.add_argument("--norm", help="Linf or L2")
    p.add_argument("--eps", help="radius in pixel space of [0,1] images, e.g. 0.3 or 8/255 (default: the dataset's)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", help="sgd, adam or adamw (default: the dataset's, see below)")
    p.add_argument("--lr", type=float, help="learning rate (default: the dataset's)")
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--lr-schedule", help="constant, multistep, cyclic, onecycle, cosine")
    p.add_argument("--lr-milestones", help="comma-separated epochs for multistep, e.g. 50,75")
    p.add_argument("--lr-peak", type=float, help="cyclic: fraction of training where the LR peaks (default 0.4)")
    p.add_argument("--label-smoothing", type=float, metavar="S",
                   help="label smoothing of the trainers' training cross-entropy, in [0, 1) (default 0)")
    p.add_argument("--train-subset", type=int, help="train on N fixed samples (indices from --seed)")
    p.add_argument("--test-subset", type=int, help="evaluate on N fixed test samples (indices from --eval-seed)")
    p.add_argument("--monitor-size", type=int, help="held-out samples for the per-epoch PGD check (0: off)")
    p.add_argument("--eval-steps", type=int, help="PGD steps of the final test evaluation (0: clean only)")
    p.add_argument("--no-augment", action="store_true", help="no data augmentation")
    p.add_argument("--color-jitter", type=float, help="brightness/contrast/saturation jitter strength")
    p.add_argument("--seed", type=int)
    p.add_argument("--eval-seed", type=int)
    p.add_argument("--data-root", help="default: $ADVPLUG_DATA, else ./data")
    p.add_argument("--download", action="store_true", default=None, help="download missing datasets (needs internet)")
    p.add_argument("--no-verify-checksums", action="store_true",
                   help="load local dataset copies that fail torchvision's md5 check (re-packed copies)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--amp", help="bf16: mixed-precision training step on CUDA (CPU training stays fp32)")
    p.add_argument("--channels-last", action="store_true", default=None,
                   help="channels-last memory format for the model and batches (GPU speed)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model for the training step (GPU speed; the first batches compile)")
    p.add_argument("--no-sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics per process (DDP's default) instead of over the "
                        "global batch")
    p.add_argument("--keep-checkpoints", action="store_true", default=None, help="keep every epoch's checkpoint")
    p.add_argument("--keep-best", action="store_true", default=None,
                   help="early stopping: the final model is the epoch with the best held-out PGD accuracy")
    p.add_argument("--co-guard", type=float, metavar="POINTS",
                   help="stop and restore the previous epoch when held-out PGD accuracy drops by more than POINTS")
    p.add_argument("--no-plot", action="store_true", help="no overfitting.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in the output directory (its files are removed first)")


def _training_overrides(args) -> dict:
    overrides = {
        "dataset": args.dataset, "model": args.model, "norm": args.norm, "eps": args.eps,
        "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer,
        "lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay,
        "lr_schedule": args.lr_schedule, "lr_peak": args.lr_peak, "label_smoothing": args.label_smoothing,
        "amp": args.amp,
        "channels_last": args.channels_last, "compile": args.compile,
        "sync_bn": False if args.no_sync_bn else None, "train_subset": args.train_subset,
        "test_subset": args.test_subset, "monitor_size": args.monitor_size,
        "eval_steps": args.eval_steps, "seed": args.seed, "eval_seed": args.eval_seed,
        "data_root": args.data_root, "download": args.download, "device": args.device,
        "out": getattr(args, "out", None), "keep_checkpoints": args.keep_checkpoints, "transforms": args.transforms,
        "keep_best": args.keep_best, "co_guard": args.co_guard, "plot": False if args.no_plot else None,
    }
    for key in ("trainer", "schedule", "sampler", "model"):  # name:key=value,... -> key, key_params
        if getattr(args, key, None):
            overrides[key], params = parse_spec(getattr(args, key))
            overrides[f"{key}_params"] = params or None
    if args.activation:
        overrides["model_params"] = {**(overrides.get("model_params") or {}), "activation": args.activation}
    if args.lr_milestones:
        try:
            overrides["lr_milestones"] = [float(m) for m in args.lr_milestones.split(",")]
        except ValueError:
            raise AdvplugError(f"--lr-milestones {args.lr_milestones!r}: write epochs like 50,75") from None
    if args.no_augment:
        overrides["augment"] = {"crop": 0, "flip": False, "color_jitter": 0.0}
    if args.color_jitter is not None:
        overrides["augment"] = {**(overrides.get("augment") or {}), "color_jitter": args.color_jitter}
    if args.no_verify_checksums:
        overrides["verify_checksums"] = False
    if args.no_progress:
        overrides["progress"] = False
    return overrides


def cmd_train(args) -> int:
    from .engine import RunInterrupted, train

    overrides = _training_overrides(args)
    try:
        run = train(args.config, resume=args.resume, overwrite=args.overwrite, **overrides)
    except RunInterrupted as stop:
        print(f"\n{stop.hint}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted before the run started; nothing was written", file=sys.stderr)
        return 130
    if run.dist.is_main:
        print(f"run written to {run.out_dir}/ (model.pt, metrics.jsonl, manifest.json)")
    return 0


def _add_study(sub):
    from .study import FAST_AT_ATTACKS, FAST_AT_TRAINERS, MIX_ATTACKS, MIX_RATIOS, VARIANT_ATTACKS

    p = sub.add_parser("study", help="train variants with identical settings, evaluate on one test subset, compare")
    kinds = p.add_subparsers(dest="study", required=True)
    fast = kinds.add_parser("fast-at", help="fast adversarial training methods side by side (time and robustness)")
    fast.add_argument("--trainers", default=FAST_AT_TRAINERS, help=f"comma-separated specs (default {FAST_AT_TRAINERS})")
    fast.add_argument("--attacks", default=FAST_AT_ATTACKS, help=f"evaluation attacks (default {FAST_AT_ATTACKS})")
    fast.add_argument("--out", default="runs/study-fast-at")
    fast.set_defaults(func=cmd_study_fast_at)
    mix = kinds.add_parser("mix-ratio", help="clean baseline vs mixed clean:adversarial training ratios (advplug-mix)")
    mix.add_argument("--ratios", default=MIX_RATIOS, help=f"clean:adversarial ratios (default {MIX_RATIOS})")
    mix.add_argument("--pool", help="the sampler's training attacks (default: mixed-ratio's, FGSM, PGD, CW, DeepFool)")
    mix.add_argument("--attacks", default=MIX_ATTACKS, help=f"evaluation attacks (default {MIX_ATTACKS})")
    mix.add_argument("--clean-drop-warning", type=float, default=2.0, metavar="POINTS",
                     help="warn when a model's clean accuracy is more than POINTS below the baseline's (default 2)")
    mix.add_argument("--out", default="runs/study-mix-ratio")
    mix.set_defaults(func=cmd_study_mix_ratio)
    custom = kinds.add_parser("variants", help="variants from a file: shared config + [variants.<label>] overrides")
    custom.add_argument("file", help="TOML: TrainConfig keys for every variant, one [variants.<label>] table each")
    custom.add_argument("--attacks", default=VARIANT_ATTACKS, help=f"evaluation attacks (default {VARIANT_ATTACKS})")
    custom.add_argument("--out", help="default: runs/study-<file name>")
    custom.set_defaults(func=cmd_study_variants)
    for kind in (fast, mix, custom):
        kind.add_argument("--eval-batch-size", type=int, default=256)
        kind.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                          help="train the runs as Ray tasks side by side (pip install 'advplug[ray]'): alone, on a "
                               "local Ray instance; or a cluster's address, auto or ray://HEAD:10001 (--out and "
                               "the data on a filesystem every node sees). Put it after the study file")
        kind.add_argument("--ray-cpus", type=float, default=1, metavar="N",
                          help="CPUs per Ray task, and its torch threads (default 1)")
        kind.add_argument("--ray-gpus", type=float, default=0, metavar="G",
                          help="GPUs per Ray task; 0.5 runs two on one GPU (default 0: the tasks train on the CPU)")
        _add_training_args(kind)


def _study(args, name: str, variants: dict, base: dict | None = None, **options) -> int:
    from .config import read_config_file
    from .study import run_study

    if base is None:
        base = read_config_file(args.config) if args.config else {}
    elif args.config:
        base = {**read_config_file(args.config), **base}
    base.update({k: v for k, v in _training_overrides(args).items() if v is not None and k != "out"})
    run_study(name, variants, base, attacks=args.attacks, out=args.out, test_subset=base.get("test_subset"),
              eval_seed=base.get("eval_seed", 42), batch_size=args.eval_batch_size,
              progress=not args.no_progress and sys.stderr.isatty(), overwrite=args.overwrite, ray=args.ray,
              ray_cpus=args.ray_cpus, ray_gpus=args.ray_gpus, **options)
    return 0


def cmd_study_fast_at(args) -> int:
    from .study import trainer_variants

    return _study(args, "fast-at", trainer_variants(args.trainers))


def cmd_study_mix_ratio(args) -> int:
    from .study import ratio_variants

    if getattr(args, "trainer", None) or getattr(args, "sampler", None):
        raise AdvplugError("study mix-ratio picks the trainer and sampler of each variant itself; "
                           "drop --trainer/--sampler (use --pool for the sampler's attacks)")
    return _study(args, "mix-ratio", ratio_variants(args.ratios, args.pool),
                  clean_drop_warning=args.clean_drop_warning)


def cmd_study_variants(args) -> int:
    from pathlib import Path

    from .study import file_variants

    base, variants = file_variants(args.file)
    args.out = args.out or f"runs/study-{Path(args.file).stem}"
    return _study(args, Path(args.file).stem, variants, base=base)


def _add_overfitting(sub):
    p = sub.add_parser("overfitting", help="plot several runs' per-epoch robust accuracy on one figure")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR[=LABEL]", help="run directories (with metrics.jsonl)")
    p.add_argument("--out", default="overfitting-comparison.png")
    p.add_argument("--title", default="")
    p.set_defaults(func=cmd_overfitting)


def _dir_and_label(item: str) -> tuple[str, str]:
    """'RUN_DIR=LABEL' -> (RUN_DIR, LABEL), where both may contain '=': the shortest
    prefix that is a directory is the run."""
    from pathlib import Path

    cuts = [i for i, ch in enumerate(item) if ch == "="]
    for cut in cuts:
        if Path(item[:cut]).is_dir():
            return item[:cut], item[cut + 1:]
    return item, ""


def cmd_overfitting(args) -> int:
    from pathlib import Path

    from .plots import plot_overfitting_comparison

    histories, steps = {}, set()
    for item in args.runs:
        run_dir, label = _dir_and_label(item)
        metrics = Path(run_dir) / "metrics.jsonl"
        if not metrics.is_file():
            raise AdvplugError(f"{metrics} not found: give run directories written by advplug train")
        history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if not any("monitor_heldout_pgd_acc" in m for m in history):
            raise AdvplugError(f"{run_dir} has no per-epoch monitor data (it was trained with --monitor-size 0)")
        try:
            steps.add(json.loads((Path(run_dir) / "config.json").read_text()).get("monitor_steps", 10))
        except (OSError, ValueError):
            pass
        histories[label or Path(run_dir).name] = history
    if len(steps) > 1:
        raise AdvplugError(f"the runs' monitors used different PGD steps ({sorted(steps)}); compare like with like")
    path = plot_overfitting_comparison(histories, args.out, steps.pop() if steps else 10, args.title)
    for label, history in histories.items():
        accs = ", ".join(f"{m['monitor_heldout_pgd_acc']:.1f}" for m in history if "monitor_heldout_pgd_acc" in m)
        print(f"{label}: held-out PGD accuracy per epoch {accs}")
    print(f"written: {path}")
    return 0


def _add_plugins(sub):
    p = sub.add_parser("plugins", help="list installed plugins and what each registered")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--params", metavar="NAME",
                   help="the parameters of one registered thing (trainer, attack, sampler, ...): "
                        "name, default, what it accepts, meaning")
    p.set_defaults(func=cmd_plugins)


def cmd_plugins(args) -> int:
    from .host import get_host

    host = get_host()
    if args.params:
        return _print_params(host.registry, args.params)
    rows = host.describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']}  {r['version']}  {r['source']}")
        for kind, names in r["registered"].items():
            print(f"    {kind.replace('_', ' ')}:")
            width = max(map(len, names))
            for name in names:
                text = host.registry.entry(kind, name).description.strip().splitlines()
                print(f"      {name:<{width}}  {text[0] if text else ''}".rstrip())
        for err in r["errors"]:
            print(f"    ERROR {err}")
    print("(advplug plugins --params NAME: the parameters of one of them)")
    return 0


def _print_params(registry, name: str) -> int:
    """Every registered thing called ``name`` (any kind; aliases too), with its parameters."""
    import difflib

    from .params import describe_params
    from .registries import KINDS

    found = [registry.entry(kind, name) for kind in KINDS
             if name in registry.tables[kind] or name in registry.aliases[kind]]
    if not found:
        known = sorted({n for kind in KINDS for n in (*registry.tables[kind], *registry.aliases[kind])})
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise AdvplugError(f"nothing called {name!r} is registered{hint}; `advplug plugins` lists every name")
    for entry in found:
        alias = f", alias {', '.join(entry.aliases)}" if entry.aliases else ""
        print(f"{KINDS[entry.kind][1]} {entry.name!r} (plugin {entry.plugin}{alias})")
        if entry.description:
            print(f"  {entry.description.strip().splitlines()[0]}")
        for line in describe_params(entry.schema):
            print(f"  {line}")
    return 0


def _add_external_model_args(p):
    """--weights/--random-init/--normalize/--logits-key for --arch and --model-factory."""
    p.add_argument("--weights", help="plain state_dict for --arch or --model-factory; 'none' when the factory "
                                     "returns a trained model itself")
    p.add_argument("--random-init", action="store_true",
                   help="evaluate --arch/--model-factory with untrained (random) weights, on purpose")
    p.add_argument("--normalize", help="MEAN/STD the external model expects, e.g. 0.1307/0.3081")
    p.add_argument("--logits-key", help="the model returns a dict (or tuple): the key (or index) of its logits")


def _add_eval(sub):
    p = sub.add_parser("eval", help="evaluate models against attacks on one identical test subset")
    p.add_argument("--model", dest="models", action="append", default=[], help="advplug model.pt or checkpoint")
    p.add_argument("--models", dest="more_models", nargs="+", default=[], help="several advplug models")
    p.add_argument("--arch", help="registered architecture for a plain state_dict given with --weights")
    p.add_argument("--model-factory", help="import path pkg.module:fn building the model (the current directory "
                                           "is importable), with --weights")
    _add_external_model_args(p)
    p.add_argument("--dataset", help="default: the dataset the models were trained on")
    p.add_argument("--attacks", help="comma-separated specs, e.g. fgsm,pgd:steps=20,cw,autoattack "
                                     "(default for mnist: the seed protocol " + "fgsm,pgd:steps=20,cw:steps=30,deepfool)")
    p.add_argument("--norm", default="Linf")
    p.add_argument("--eps", help="pixel space; default: the dataset's (MNIST Linf 0.3, L2 2.0; else 8/255, 0.5)")
    p.add_argument("--test-subset", type=int, help="N fixed test images (indices from --seed)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--eot-samples", type=int, default=20,
                   help="a stochastic model (two forward passes of one batch differ) is also attacked with "
                        "expectation over transformation: EOT-PGD averaging this many gradient samples per step, "
                        "and AutoAttack's rand version where autoattack is asked for (default 20)")
    p.add_argument("--no-eot", action="store_true",
                   help="attack stochastic models with the given attacks only (the table then warns)")
    p.add_argument("--sanity", action="store_true", help="gradient-masking sanity checks")
    p.add_argument("--sanity-samples", type=int, default=200)
    p.add_argument("--data-root")
    p.add_argument("--no-verify-checksums", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=("bf16", "fp16"), type=str.lower,
                   help="mixed precision: the clean predictions and every attack's forward and backward passes "
                        "under torch.autocast of the device (CUDA: bf16 or fp16; CPU: bf16), logits in float32; "
                        "the report says so and stored results are kept apart by precision (default: fp32)")
    p.add_argument("--out", default="runs/eval",
                   help="eval.json, eval.md and results/ (each finished (model, attack) result, reused on a rerun); "
                        "default runs/eval")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)


def _check_external_model_flags(args):
    """--weights, --random-init and --logits-key only mean something with --arch/--model-factory."""
    if (args.weights or args.random_init or args.logits_key) and not (args.arch or args.model_factory):
        raise AdvplugError("--weights, --random-init and --logits-key go with --arch or --model-factory")


def _external_model(args, dataset_spec, registry):
    """(model, spec) from --arch/--model-factory with --weights FILE|none or --random-init."""
    from .modelio import load_external_model

    return load_external_model(dataset_spec, registry, arch=args.arch, factory=args.model_factory,
                               weights=args.weights, normalize=args.normalize, random_init=args.random_init,
                               logits_key=args.logits_key)


def cmd_eval(args) -> int:
    from .engine import resolve_device
    from .evaluation import model_labels, run_evaluation
    from .host import get_host
    from .modelio import load_model_and_spec
    from .precision import autocast_dtype
    from .rundir import check_output_dir

    from .distributed import setup

    check_output_dir(args.out)
    _check_external_model_flags(args)
    registry = get_host().registry
    dist, device = setup(args.device)  # under torchrun: this process's share of the test batches
    device = resolve_device(device)
    autocast_dtype(args.amp, device)  # fp16 on the CPU: one error before any model is loaded
    paths = [*args.models, *args.more_models]
    models = {label: load_model_and_spec(path, device, registry)
              for label, path in zip(model_labels(paths), paths)}
    if args.arch or args.model_factory:
        dataset = args.dataset or (next(iter(models.values()))[1] or {}).get("dataset") if models else args.dataset
        if not dataset:
            raise AdvplugError("--arch/--model-factory need --dataset")
        model, spec = _external_model(args, registry.get("datasets", dataset), registry)
        models[spec["label"]] = (model, spec)
    if not models:
        raise AdvplugError("nothing to evaluate: pass --model FILE, --models A B ..., or --arch/--model-factory with --weights")
    try:
        run_evaluation(models, dataset=args.dataset, attacks=args.attacks, norm=args.norm, eps=args.eps,
                       test_subset=args.test_subset, seed=args.seed, data_root=args.data_root,
                       verify_checksums=not args.no_verify_checksums, batch_size=args.batch_size,
                       device=str(device), sanity=args.sanity, sanity_samples=args.sanity_samples, out=args.out,
                       registry=registry, progress=not args.no_progress and sys.stderr.isatty(),
                       eot_samples=None if args.no_eot else args.eot_samples, amp=args.amp, dist=dist)
    except KeyboardInterrupt:
        from .result_store import FOLDER

        print(f"\ninterrupted; the finished results are kept in {Path(args.out) / FOLDER}: rerun the same command "
              f"to continue with the rest", file=sys.stderr)
        return 130
    return 0


def _add_certify(sub):
    p = sub.add_parser(
        "certify", help="randomized smoothing: certified L2 accuracy (Cohen et al. 2019) of a model",
        description="Certify the smoothed classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c) of a model f on "
                    "test images with Cohen, Rosenfeld & Kolter's CERTIFY (ICML 2019): per image, n0 noisy copies "
                    "pick the top class, n fresh ones bound its probability pA from below (Clopper-Pearson, level "
                    "1 - alpha); pA < 1/2 abstains, else the class is certified within the L2 radius "
                    "sigma * PhiInverse(pA). The model should have been trained under Gaussian noise of the same "
                    "sigma (e.g. advplug train --trainer gaussian-noise:sigma=0.25, from the advplug-defenses plugin).",
        epilog="writes OUT/certify.tsv (idx, label, predict, radius, correct, time: the reference code's columns; "
               "predict -1 = abstain), OUT/certify.json (settings, certified accuracy per radius with its 95% CI, "
               "abstentions) and OUT/certified_accuracy.png")
    p.add_argument("--model", help="advplug model.pt or checkpoint (required; trained with Gaussian noise of the "
                                   "same sigma, e.g. --trainer gaussian-noise:sigma=0.25)")
    p.add_argument("--sigma", type=float, help="noise standard deviation, pixel space of [0, 1] images (required; "
                                               "the training sigma)")
    p.add_argument("--n0", type=int, default=100, help="noise samples that select the top class (default 100)")
    p.add_argument("--n", type=int, default=100_000, help="noise samples that estimate its probability "
                                                          "(default 100000)")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability (default 0.001)")
    p.add_argument("--batch", type=int, default=1000, help="noisy copies per forward pass (default 1000)")
    p.add_argument("--test-subset", type=int, help="N fixed test images (indices from --seed, as advplug eval)")
    p.add_argument("--seed", type=int, default=42, help="test-subset indices and noise (default 42)")
    p.add_argument("--skip", type=int, default=1, help="certify every K-th of the test images (Cohen et al.: "
                                                       "every 20th CIFAR-10 test image)")
    p.add_argument("--radii", default="0,0.25,0.5,0.75,1.0", help="L2 radii of the table (default 0,0.25,0.5,0.75,1.0)")
    p.add_argument("--dataset", help="default: the dataset the model was trained on")
    p.add_argument("--data-root", help="default: $ADVPLUG_DATA, else ./data")
    p.add_argument("--no-verify-checksums", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/certify", help="output directory (default runs/certify)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_certify)


def cmd_certify(args) -> int:
    from .certify import run_certification

    if not args.model:
        raise AdvplugError("pass --model MODEL.pt: the advplug model (or checkpoint) to certify")
    if args.sigma is None:
        raise AdvplugError("pass --sigma: the noise standard deviation the model was trained with, e.g. 0.25")
    try:
        run_certification(args.model, args.sigma, n0=args.n0, n=args.n, alpha=args.alpha, batch=args.batch,
                          test_subset=args.test_subset, seed=args.seed, skip=args.skip, dataset=args.dataset,
                          data_root=args.data_root, verify_checksums=not args.no_verify_checksums,
                          device=args.device, out=args.out, radii=args.radii,
                          progress=not args.no_progress and sys.stderr.isatty())
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


def _add_benchmark(sub):
    p = sub.add_parser("benchmark", help="RobustBench's protocol (clean + AutoAttack standard) -> model_info JSON")
    which = p.add_argument_group("the model (one of)")
    which.add_argument("--model", help="advplug model.pt or checkpoint")
    which.add_argument("--robustbench-model", metavar="NAME", help="a RobustBench zoo model, e.g. Wong2020Fast")
    which.add_argument("--arch", help="registered architecture for a plain state_dict given with --weights")
    which.add_argument("--model-factory", help="import path pkg.module:fn building the model, with --weights")
    _add_external_model_args(p)
    p.add_argument("--model-dir", default="./models", help="RobustBench zoo weights: <dir>/<dataset>/<threat>/NAME.pt")
    p.add_argument("--name", help="model id of the result (default: run dir or zoo name)")
    p.add_argument("--dataset", default="cifar10", help="cifar10, cifar100 or imagenet")
    p.add_argument("--threat", default="Linf", help="Linf, L2 or corruptions")
    p.add_argument("--eps", help="default: the leaderboard's (Linf 8/255, L2 0.5; ImageNet Linf 4/255)")
    p.add_argument("--n-examples", type=int, default=10000, help="first N test images (leaderboard: 10000)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="AutoAttack seed (RobustBench leaves it to the clock)")
    p.add_argument("--additional-data", action="store_true", help="the model was trained with extra data")
    p.add_argument("--preprocessing", help="RobustBench preprocessing name (ImageNet), e.g. Res256Crop224")
    p.add_argument("--data-root", help="default: $ADVPLUG_DATA, else ./data")
    p.add_argument("--corruptions-data-dir", help="where CIFAR-10-C / ImageNet-C lie (default: data root)")
    p.add_argument("--no-verify-checksums", action="store_true")
    p.add_argument("--leaderboard-dir", help="RobustBench model_info folder: print the model's rank at the end")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/benchmark", help="model_info JSON, AutoAttack log and resumable state")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_benchmark)


def cmd_benchmark(args) -> int:
    from .benchmark import run as bench
    from .benchmark.model_info import DATASETS, check_threat
    from .engine import resolve_device
    from .rundir import check_output_dir
    from .threat import parse_eps

    if args.dataset not in DATASETS:
        model = args.model or "MODEL.pt"
        raise AdvplugError(f"RobustBench has no {args.dataset} leaderboard (only {', '.join(DATASETS)}); for "
                           f"AutoAttack on a {args.dataset} model: advplug eval --model {model} --attacks autoattack")
    check_threat(args.dataset, args.threat)
    chosen = [flag for flag, value in (("--model", args.model), ("--robustbench-model", args.robustbench_model),
                                       ("--arch", args.arch), ("--model-factory", args.model_factory)) if value]
    if len(chosen) != 1:
        raise AdvplugError("pass exactly one of --model, --robustbench-model, --arch or --model-factory"
                           + (f" (got {', '.join(chosen)})" if chosen else ""))
    from .distributed import setup

    check_output_dir(args.out)
    _check_external_model_flags(args)
    dist, device = setup(args.device)  # under torchrun: this process's share of AutoAttack's batches
    device = resolve_device(device)
    if args.model:
        bm = bench.advplug_model(args.model, args.dataset, device, args.name)
    elif args.robustbench_model:
        bm = bench.zoo_model(args.robustbench_model, args.dataset, args.threat, args.model_dir, args.name)
    else:
        bm = bench.external_model(args.dataset, arch=args.arch, factory=args.model_factory, weights=args.weights,
                                  normalize=args.normalize, random_init=args.random_init,
                                  logits_key=args.logits_key, name=args.name)
    result, path = bench.benchmark_to_model_info(
        bm, args.out, dataset=args.dataset, threat=args.threat, additional_data=args.additional_data,
        eps=parse_eps(args.eps) if args.eps else None, n_examples=args.n_examples, batch_size=args.batch_size,
        data_dir=args.data_root, corruptions_data_dir=args.corruptions_data_dir, device=device, seed=args.seed,
        preprocessing=args.preprocessing, verify_checksums=not args.no_verify_checksums, progress=not args.quiet,
        dist=dist)
    if not dist.is_main:
        return 0
    robust = "AutoAttack" if args.threat != "corruptions" else "corruptions"
    print(f"{bm.name}: clean {100 * result.clean_acc:.2f} %, {robust} {100 * result.robust_acc:.2f} % "
          f"on {result.n_examples} {args.dataset} test images ({result.seconds:.0f} s, {result.runner})")
    print(f"model_info written to {path}")
    if args.leaderboard_dir:
        _print_leaderboard(args.leaderboard_dir, args.dataset, args.threat, path, "text", rank_only=True)
    else:
        print(f"rank it: advplug leaderboard --dataset {args.dataset} --threat {args.threat} --with {path}")
    return 0


def _add_leaderboard(sub):
    p = sub.add_parser("leaderboard", help="the RobustBench leaderboard, ranked, with your model inserted")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--threat", default="Linf")
    p.add_argument("--with", dest="result", metavar="RESULT.json", help="model_info JSON from advplug benchmark")
    p.add_argument("--leaderboard-dir", help="RobustBench model_info folder (default: fetched from GitHub and cached)")
    p.add_argument("--format", default="text", help="text, markdown, html or json")
    p.set_defaults(func=cmd_leaderboard)


def cmd_leaderboard(args) -> int:
    _print_leaderboard(args.leaderboard_dir, args.dataset, args.threat, args.result, args.format)
    return 0


def _print_leaderboard(leaderboard_dir, dataset, threat, result, fmt, rank_only=False):
    from .benchmark import leaderboard as lb

    board = lb.load_leaderboard(lb.resolve_leaderboard_dir(leaderboard_dir, dataset, threat), dataset, threat)
    for warning in board.warnings():
        warn(warning)
    rows = board.rows
    if result:
        model, entry = lb.load_result(result, threat, dataset)
        rows = board.insert(entry, model)
    if rank_only:
        mine = next(row for row in rows if row.is_user)
        print(f"leaderboard rank: {mine.rank} of {len(rows)} ({dataset} {threat}, {board.path})")
        note = lb.reduced_n_note(mine)
        if note:
            print(note)
        return
    print(lb.render(rows, fmt))


def _add_recipes(sub):
    p = sub.add_parser("recipes", help="list the shipped recipes (published settings with the numbers they should "
                                       "reproduce), or print one")
    p.add_argument("name", nargs="?", help="print this recipe's file")
    p.set_defaults(func=cmd_recipes)
    p = sub.add_parser("reproduce", help="train recipes over seeds, evaluate, and check against the published numbers",
                       description="Train each recipe over its seeds, evaluate every seed on the same test images, "
                                   "and print published vs measured with 95% confidence intervals. Finished seeds "
                                   "are reused, interrupted ones resumed: rerun the same command to continue.")
    p.add_argument("names", nargs="+", metavar="NAME", help="recipe(s); several: one report and time ratios "
                                                            "against the first")
    p.add_argument("--seeds", help="e.g. 0,1,2 or 0-4 (default: the recipe's)")
    p.add_argument("--quick", action="store_true", help="minutes-long smoke version (few images, one epoch, a "
                                                        "cheap attack): checks the pipeline, reproduces nothing")
    p.add_argument("--n-eval", type=int, help="test images (default: the recipe's, 1,000)")
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", help="bf16: mixed-precision training on CUDA")
    p.add_argument("--channels-last", action="store_true", help="channels-last model and batches (GPU speed)")
    p.add_argument("--data-root")
    p.add_argument("--no-verify-checksums", action="store_true",
                   help="load local dataset copies that fail torchvision's md5 check (re-packed copies)")
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--overwrite", action="store_true", help="retrain seeds whose runs have other settings")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_reproduce)


def cmd_recipes(args) -> int:
    from .recipes import load_recipes, recipe_text

    if args.name:
        print(recipe_text(args.name), end="")
        return 0
    recipes = load_recipes()
    width = max(map(len, recipes))
    for name, r in recipes.items():
        t = r.train
        published = ", ".join(f"{p.metric} {p.value:.2f}" for p in r.published) or "no published number"
        print(f"{name:<{width}}  {r.hardware}  {t.get('dataset')} {t.get('model')} {t.get('trainer')}, "
              f"{t.get('epochs')} epochs  | published: {published}")
        print(f"{'':<{width}}       {r.title}")
    print("\nadvplug recipes NAME prints one; advplug reproduce NAME [--seeds 0-4] [--quick] runs it")
    return 0


def cmd_reproduce(args) -> int:
    from .engine import RunInterrupted
    from .reproduce import run_reproduce

    try:
        run_reproduce(args.names, args.seeds, quick=args.quick, n_eval=args.n_eval, out=args.out,
                      device=args.device, amp=args.amp, channels_last=args.channels_last or None,
                      overwrite=args.overwrite, data_root=args.data_root,
                      verify_checksums=not args.no_verify_checksums, batch_size=args.eval_batch_size,
                      progress=not args.no_progress and sys.stderr.isatty())
    except (RunInterrupted, KeyboardInterrupt):
        print("\ninterrupted; finished seeds and evaluations are kept: run the same command again to continue",
              file=sys.stderr)
        return 130
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="advplug", description="Adversarial training and robustness evaluation with plugins")
    parser.add_argument("--version", action="version", version=f"advplug {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_benchmark(sub)
    _add_leaderboard(sub)
    _add_study(sub)
    _add_overfitting(sub)
    _add_plugins(sub)
    _add_certify(sub)
    _add_recipes(sub)
    return parser


def main(argv=None) -> int:
    from . import distributed

    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except AdvplugError as exc:
        rank = distributed.current().rank
        print(f"advplug: error: {'[process %d] ' % rank if rank else ''}{exc}", file=sys.stderr)
        return 2
    finally:
        distributed.teardown()
    _warn_plugin_errors(args)
    return code


def _warn_plugin_errors(args):
    """One stderr line per plugin that failed to load or was disabled, and per hook
    implementation refused (misspelled hook, wrong arguments, wrapper): ``advplug plugins``
    lists them itself; errors inside hooks were warned about when they happened."""
    if args.command == "plugins":
        return
    from . import host

    if host._HOST is not None:
        for err in host._HOST.errors:
            if err.provides_nothing or err.refused:
                warn(err)


if __name__ == "__main__":
    sys.exit(main())
