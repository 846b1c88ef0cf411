"""AutoAttack ``standard`` with a state file that survives interruption, batch by batch.

AutoAttack's evaluation loop is: clean predictions give the robust flags; for each attack
in order (APGD-CE, APGD-T, FAB-T, Square), the points still robust are taken in index
order, cut into batches of ``batch_size``, each batch is attacked (every attack reseeds
itself with ``seed`` at the start of each batch), and the points it fools lose their flag.

pyautoattack 0.2 has a ``state_path`` for this, but it cannot resume: ``to_disk`` stores
the attack set as its ``str()``, which ``from_disk`` never turns back into a set, so every
saved state is rejected as "created with a different set of attacks"; a restored run
also reaches an unassigned variable (``y_adv``) as soon as it attacks a point; the list
of finished attacks is saved at most once a minute and the file is rewritten in place.

So advplug drives that loop itself and leaves each attack to pyautoattack: for every batch
it calls ``run_standard_evaluation`` on exactly the batch AutoAttack would form, with
``attacks_to_run`` set to the one attack (the ``standard`` version's parameters stay as
pyautoattack sets them). Per batch the result is the same computation as one whole run;
the test suite checks the robust flags match a plain pyautoattack call. After every batch
the state (flags, finished attacks, the current attack's starting flags and the batches
done) is written atomically, so an interrupted evaluation continues at the next batch and
ends with the numbers an uninterrupted one would have given.

Under torchrun (``dist``) the processes share each attack's batches -- the very batches one
process would form, batch ``i`` to process ``i mod N`` -- and AND their robust flags when
the attack ends, so the result is the single-process one. Each process keeps its own
state file (rank 0 ``autoattack_state.json``, the others ``autoattack_state.rank<r>.json``);
a resumed evaluation, with any number of processes, merges them: flags ANDed, batches done
united.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..distributed import SINGLE
from ..errors import AdvplugError

STATE_FORMAT = "advplug-autoattack-state/1"
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


def _save(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def load_state(path) -> dict:
    """The saved state; a damaged or foreign file is one clear error."""
    path = Path(path)
    try:
        state = json.loads(path.read_text())
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"format {state.get('format')!r}, expected {STATE_FORMAT!r}")
        state["robust_flags"] = torch.tensor(state["robust_flags"], dtype=torch.bool)
        return state
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AdvplugError(f"AutoAttack state file {path} is damaged ({type(exc).__name__}: {exc}); "
                           f"delete it to restart the AutoAttack part") from None


def _predict(model, x, batch_size, device) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def run_autoattack(model, x, y, *, norm: str, eps: float, seed: int, batch_size: int, device, state_path,
                   progress: bool = True, logger: logging.Logger | None = None,
                   attacks=STANDARD_ATTACKS, clock_start: float | None = None, dist=SINGLE) -> dict:
    """AutoAttack standard on ``(x, y)``; returns the final state (``robust_flags``,
    ``clean_accuracy``, ``robust_accuracy``, ``done``, ``elapsed_s``). Continues from
    ``state_path`` if it exists. ``attacks`` runs a prefix/subset of the standard attacks
    with the standard version's parameters (the leaderboard protocol uses all four).
    ``elapsed_s`` is the wall time of every session so far (this one from ``clock_start``,
    default: now), saved with each batch; ``previous_sessions_s`` the part before this one."""
    clock_start = time.time() if clock_start is None else clock_start
    from ..attacks.autoattack_adapter import autoattack_module

    state_path = Path(state_path)
    logger = logger or logging.getLogger("advplug.benchmark")
    state = dist.on_main(_starting_state, model, x, y, attacks, batch_size, device, state_path)
    state["robust_flags"] = torch.tensor(state["robust_flags"], dtype=torch.bool)
    before = float(state.get("elapsed_s") or 0.0)
    state["previous_sessions_s"] = before
    own_path = state_path if dist.is_main else shard_path(state_path, dist.rank)
    progress = progress and dist.is_main

    def save():
        state["elapsed_s"] = before + time.time() - clock_start
        _save(own_path, _jsonable(state))

    save()
    adversary = autoattack_module().AutoAttack(model, norm=norm, eps=eps, version="standard", device=device,
                                               seed=seed)
    adversary.verbose = False
    flags = state["robust_flags"]
    start = time.time()
    for attack in state["attacks"]:
        if attack in state["done"]:
            continue
        if not flags.any():
            logger.info("no robust points left; %s and the rest have nothing to attack", attack.upper())
            state["done"] = list(state["attacks"])
            save()
            break
        current = state["current"] if (state["current"] or {}).get("attack") == attack else None
        if current is None:
            current = {"attack": attack, "start_flags": flags.tolist(), "batches_done": []}
        robust_idx = torch.tensor(current["start_flags"], dtype=torch.bool).nonzero().flatten()
        batches = [robust_idx[i:i + batch_size] for i in range(0, len(robust_idx), batch_size)]
        adversary.attacks_to_run = [attack]
        done = set(current["batches_done"])
        todo = [n for n in dist.mine(len(batches)) if n not in done]  # every N-th batch under torchrun
        bar = tqdm(total=len(todo), desc=f"autoattack {attack}" + (" (rank 0's share)" if dist.active else ""),
                   disable=not progress, leave=True)
        for number in todo:
            idx = batches[number]
            _, y_adv = adversary.run_standard_evaluation(x[idx].to(device), y[idx].to(device),
                                                         batch_size=len(idx))
            flags[idx] &= y_adv.cpu() == y[idx].cpu()
            current["batches_done"] = sorted({*current["batches_done"], number})
            state.update(robust_flags=flags, current=current)
            save()
            bar.set_postfix(robust=f"{flags.float().mean().item():.2%}")
            bar.update(1)
        bar.close()
        if dist.active:  # each process cleared the flags of its batches only
            flags = torch.tensor(dist.gather(flags.tolist()), dtype=torch.bool).all(0)
            state["robust_flags"] = flags
        state["done"].append(attack)
        state["current"] = None
        save()
        logger.info("robust accuracy after %s: %.2f%% (%d batches, %.1f s)", attack.upper(),
                    100 * flags.float().mean().item(), len(batches), time.time() - start)
    state["robust_accuracy"] = flags.float().mean().item()
    if dist.active:  # every process saved the same finished state: rank 0's file is the one kept
        dist.barrier()
        if dist.is_main:
            for rank in range(1, dist.world_size):
                shard_path(state_path, rank).unlink(missing_ok=True)
    return state


def _jsonable(state: dict) -> dict:
    return {**state, "robust_flags": state["robust_flags"].tolist()}


def shard_path(state_path: Path, rank: int) -> Path:
    """The state file of process ``rank`` > 0 under torchrun."""
    return state_path.with_name(f"{state_path.stem}.rank{rank}{state_path.suffix}")


def _starting_state(model, x, y, attacks, batch_size, device, state_path: Path) -> dict:
    """The state to continue from (JSON-able): the saved one, merged with the state files of
    the processes of a sharded evaluation; a new one (clean flags) when nothing is saved."""
    shards = sorted(state_path.parent.glob(f"{state_path.stem}.rank*{state_path.suffix}"))
    saved = [load_state(p) for p in [state_path, *shards] if p.exists()]
    if not saved:
        flags = _predict(model, x, batch_size, device) == y.cpu()
        return {"format": STATE_FORMAT, "attacks": list(attacks), "done": [], "current": None,
                "robust_flags": flags.tolist(), "clean_accuracy": flags.float().mean().item()}
    for state, path in zip(saved, [state_path, *shards]):
        if len(state["robust_flags"]) != len(x) or state["attacks"] != list(attacks):
            raise AdvplugError(f"{path} holds {len(state['robust_flags'])} examples and attacks "
                               f"{state['attacks']}, not {len(x)} and {list(attacks)}; "
                               f"delete it to start over")
    state = _merged(saved)
    for p in shards:  # folded into the main state file, written next
        p.unlink()
    _save(state_path, _jsonable(state))
    return _jsonable(state)


def _merged(states: list) -> dict:
    """One state from those of several processes: the furthest along (most attacks done)
    is the base; the others at the same point add the batches they finished (flags ANDed)."""
    base = max(states, key=lambda s: len(s["done"]))
    state = {**base, "current": dict(base["current"]) if base["current"] else None}
    _batches_as_list(state["current"])
    for other in states:
        same_point = other["done"] == base["done"] and (other["current"] or {}).get("attack") == \
            (base["current"] or {}).get("attack")
        if other is base or not same_point:
            continue
        state["robust_flags"] = state["robust_flags"] & other["robust_flags"]
        if state["current"]:
            done = _batches_as_list(dict(other["current"]))["batches_done"]
            state["current"]["batches_done"] = sorted({*state["current"]["batches_done"], *done})
    return state


def _batches_as_list(current: dict | None) -> dict | None:
    """``batches_done`` as the list of batch numbers (states saved before sharding: a count)."""
    if current is not None and isinstance(current.get("batches_done"), int):
        current["batches_done"] = list(range(current["batches_done"]))
    return current
