"""PNG plots people would rather look at than read: catastrophic overfitting per epoch."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path) -> Path:
    """Lay out, write (creating the folder) and close ``fig``."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_overfitting(history: list[dict], path, monitor_steps: int = 10, title: str = "") -> Path | None:
    """Top: PGD accuracy per epoch on the held-out and the training monitor subsets (the
    gap and a sudden fall are catastrophic overfitting). Bottom: how often the training
    adversarial examples fool the model (100 - running adversarial training accuracy).
    Epochs where the overfitting guard fired are marked. Returns None without monitor data."""
    rows = [m for m in history if "monitor_heldout_pgd_acc" in m]
    if not rows:
        return None
    plt = _pyplot()
    epochs = [m["epoch"] for m in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 6.0), sharex=True)
    top.plot(epochs, [m["monitor_train_pgd_acc"] for m in rows], "o-", label="training subset")
    top.plot(epochs, [m["monitor_heldout_pgd_acc"] for m in rows], "s-", label="held-out subset")
    top.plot(epochs, [m["monitor_heldout_clean_acc"] for m in rows], ":", color="gray", label="held-out clean")
    top.set_ylabel(f"PGD-{monitor_steps} accuracy (%)")
    top.set_ylim(-2, 102)
    top.legend(loc="best", fontsize=8)
    top.set_title(title or "robust accuracy per epoch")
    bottom.plot(epochs, [100.0 - m["train_acc"] for m in rows], "o-", color="tab:red")
    bottom.set_ylabel("training adv. examples\nmisclassified (%)")
    bottom.set_xlabel("epoch")
    bottom.set_ylim(-2, 102)
    for m in rows:
        if m.get("co_guard_triggered"):
            for ax in (top, bottom):
                ax.axvline(m["epoch"], color="black", linestyle="--", linewidth=1)
            top.annotate("guard: restored", (m["epoch"], 95), fontsize=8, ha="right")
    from matplotlib.ticker import MaxNLocator

    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_overfitting_comparison(histories: dict[str, list[dict]], path, monitor_steps: int = 10,
                                title: str = "") -> Path:
    """Several runs on one figure: held-out PGD accuracy per epoch (top) and the share of
    training adversarial examples that fool the model (bottom), one line per run -- a
    collapse in one run and not another shows as one line falling while the other holds."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.0, 6.4), sharex=True)
    for label, history in histories.items():
        rows = [m for m in history if "monitor_heldout_pgd_acc" in m]
        epochs = [m["epoch"] for m in rows]
        line, = top.plot(epochs, [m["monitor_heldout_pgd_acc"] for m in rows], "o-", label=label)
        bottom.plot(epochs, [100.0 - m["train_acc"] for m in rows], "o-", color=line.get_color(), label=label)
    top.set_ylabel(f"held-out PGD-{monitor_steps} accuracy (%)")
    top.set_title(title or "catastrophic overfitting: robust accuracy per epoch")
    top.legend(loc="best", fontsize=7)
    bottom.set_ylabel("training adv. examples\nmisclassified (%)")
    bottom.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator

    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (top, bottom):
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def plot_heldout_by_group(groups: dict[str, dict], path, monitor_steps: int = 10, title: str = "") -> Path | None:
    """Held-out PGD accuracy per epoch: one color per group (e.g. a recipe), one line per
    member (e.g. a seed), so how many seeds of each method collapse shows at a glance."""
    if not any("monitor_heldout_pgd_acc" in m for runs in groups.values() for h in runs.values() for m in h):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (group, runs) in enumerate(groups.items()):
        for j, (member, history) in enumerate(runs.items()):
            rows = [m for m in history if "monitor_heldout_pgd_acc" in m]
            ax.plot([m["epoch"] for m in rows], [m["monitor_heldout_pgd_acc"] for m in rows], "o-", markersize=3,
                    color=colors[i % len(colors)], alpha=0.8, label=group if j == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"held-out PGD-{monitor_steps} accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title or "held-out robust accuracy per epoch (one line per seed)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(plt, fig, path)
