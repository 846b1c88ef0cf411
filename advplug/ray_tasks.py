"""Study runs as Ray tasks (``advplug study ... --ray``): connect to Ray, send each run to
train as a task with its resources, bring back one line per finished run and the same
one-line error a run gives in the study's own process. What to train, reuse or resume is
:func:`advplug.study.plan_run`'s decision; this module only executes it elsewhere. Ray is
an optional extra (``pip install 'advplug[ray]'``)."""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import AdvplugError
from .study import _execute_run


RAY_HINT = "pip install 'advplug[ray]'"


def import_ray():
    """The ``ray`` module, or one AdvplugError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise AdvplugError(f"--ray runs the study's trainings as Ray tasks and needs Ray, which is not installed "
                           f"({exc}): {RAY_HINT}") from None
    return ray


def check_ray_resources(configs: dict, cpus: float, gpus: float) -> None:
    """One error for resources no task can run with, before Ray starts or anything trains."""
    if not cpus > 0:
        raise AdvplugError(f"--ray-cpus must be more than 0 (a task's CPUs, and its torch threads), got {cpus:g}")
    if not gpus >= 0:
        raise AdvplugError(f"--ray-gpus must be 0 or more (each task's GPUs, 0.5: two tasks share one), got {gpus:g}")
    cuda = sorted({cfg.device for cfg in configs.values() if str(cfg.device).startswith("cuda")})
    if cuda and not gpus:
        raise AdvplugError(f"--device {cuda[0]} with --ray-gpus 0: Ray gives the tasks no GPU; pass --ray-gpus 1 "
                           f"(or 0.5 to run two tasks on one GPU), or --device cpu")


def connect_ray(ray, address: str) -> bool:
    """Connect to ``address`` ("local": a new local instance), unless Ray is initialized
    already; True when this call started it (and :func:`train_runs` shuts it down)."""
    import logging

    if ray.is_initialized():
        return False
    options = {"include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=address, logging_level=logging.ERROR, **options)
    except Exception as exc:  # noqa: BLE001 -- whatever Ray raises: the address, the cluster, the client
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdvplugError(f"--ray {address}: could not start or reach Ray ({detail}); give a cluster's address "
                           f"(auto, or ray://HEAD:10001), or --ray alone for a local instance") from None
    return True


def run_on_ray(ray, jobs: dict, cpus: float, gpus: float, log_dir: Path, prefix: str) -> None:
    """Run :func:`advplug.study._execute_run` for every ``{label: (action, config)}`` as a Ray task, all at
    once (Ray queues what the resources do not fit); a line per finished run. The first
    failed run's error (in the study's order) is raised once every task has ended, as the
    same AdvplugError the run gives here, so the runs that did finish are kept and reused."""
    import time

    log_dir.mkdir(parents=True, exist_ok=True)
    task = ray.remote(_ray_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    pending, errors = {}, {}
    try:
        for label, (action, cfg) in jobs.items():
            Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)  # a task that cannot see it refuses to train
            log = str((log_dir / f"{label}.log").resolve())
            pending[task.remote(action, _task_config(cfg), cpus, gpus, log)] = label
        begun = time.monotonic()
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            label = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError:
                raise  # a bug in advplug or a plugin: Ray's traceback of it
            except ray.exceptions.RayError as exc:  # the worker died (out of memory, node lost), ...
                result = {"error": f"the Ray task training {label} ended without a result ({type(exc).__name__}: "
                                   f"{str(exc).strip().splitlines()[0] if str(exc).strip() else '-'}); run the "
                                   f"same command again: it resumes from the run's last checkpoint"}
            cfg = jobs[label][1]
            if "error" not in result and not (Path(cfg.out) / "metrics.jsonl").is_file():
                result["error"] = (f"the Ray task training {label} finished on {result['node']}, but {cfg.out} has "
                                   f"no metrics.jsonl here: on a Ray cluster, --out must be on a filesystem every "
                                   f"node sees at the same path")
            for line in result.get("warnings", []):
                print(f"advplug: warning: {label}: {line}", file=sys.stderr, flush=True)
            if "error" in result:
                errors[label] = result["error"]
                print(f"[{prefix}] {label}: failed after {result.get('wall_s', time.monotonic() - begun):.1f} s "
                      f"({len(pending)} other run(s) still going)", flush=True)
            else:
                print(f"[{prefix}] {label}: finished (seed {result['seed']}) in {result['wall_s']:.1f} s on "
                      f"{result['node']}", flush=True)
    except BaseException:
        for ref in pending:  # interrupted (or a bug): the unfinished runs resume from their checkpoints next time
            ray.cancel(ref, force=True)
        raise
    if errors:
        raise AdvplugError(errors[next(label for label in jobs if label in errors)])


def _task_config(cfg) -> dict:
    """``cfg`` as a task takes it: a dict, with absolute paths (a cluster's workers start
    elsewhere)."""
    config = cfg.to_dict()
    config["out"] = str(Path(cfg.out).resolve())
    if config.get("data_root"):
        config["data_root"] = str(Path(config["data_root"]).expanduser().resolve())
    return config


def _ray_task(action: str, config: dict, cpus: float, gpus: float, log: str) -> dict:
    """One study run in a Ray worker: ``_execute_run`` with ``max(1, int(cpus))`` torch
    threads and the run's console output in ``log``. An AdvplugError comes back as
    ``{"error": message}``, not raised (Ray would wrap it in its traceback)."""
    import contextlib
    import socket
    import time

    import torch

    torch.set_num_threads(max(1, int(cpus)))
    node, begun = socket.gethostname(), time.perf_counter()
    overrides = {}
    if not gpus and config.get("device") in (None, "auto"):
        overrides["device"] = "cpu"  # Ray lets a task without GPUs see them all: keep off the others' GPUs
    if action == "resume" and config.get("data_root"):
        overrides["data_root"] = config["data_root"]
    try:
        if not Path(config["out"]).parent.is_dir():
            raise AdvplugError(f"{Path(config['out']).parent} does not exist on the Ray node {node}: on a Ray "
                               f"cluster, --out (and the data) must be on a filesystem every node sees at the "
                               f"same path")
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            _execute_run(action, config, **overrides)
    except AdvplugError as exc:
        return {"error": str(exc), "node": node, "wall_s": time.perf_counter() - begun,
                "warnings": _logged_warnings(log)}
    return {"node": node, "seed": config.get("seed"), "wall_s": time.perf_counter() - begun,
            "warnings": _logged_warnings(log)}


def _logged_warnings(log: str) -> list[str]:
    """The ``advplug: warning:`` lines of a task's log, to say again in the study's output."""
    try:
        lines = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return []
    mark = "advplug: warning: "
    return [line[line.index(mark) + len(mark):] for line in lines if mark in line]
