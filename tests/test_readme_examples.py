"""Every command in README.md and plugins/*/README.md runs as written (sizes shrunk, see
``readme_runner``), on a fresh directory with ../shared beside it."""
import pytest

from readme_runner import REPO, code_blocks, commands, run_readme, shrink

READMES = [REPO / "README.md", *sorted(REPO.glob("plugins/*/README.md"))]


def test_shrink_caps_sizes_and_adds_missing_ones():
    assert shrink("advplug train --trainer pgd-at --train-subset 10000 --epochs 10 --out runs/x") == \
        ("advplug train --trainer pgd-at --train-subset 128 --epochs 1 --out runs/x --test-subset 16 "
         "--monitor-size 16 --no-progress")
    assert shrink("advplug train --resume runs/pgd --epochs 10") == \
        "advplug train --resume runs/pgd --epochs 2 --no-progress"
    assert shrink("advplug eval --model m.pt --sanity") == \
        "advplug eval --model m.pt --sanity --test-subset 16 --sanity-samples 8 --no-progress"
    assert shrink("advplug leaderboard --dataset cifar10") == "advplug leaderboard --dataset cifar10"
    assert shrink("advplug reproduce wong2020-mnist-fgsm-rs --seeds 0-4") == \
        "advplug reproduce wong2020-mnist-fgsm-rs --seeds 0-4 --quick --no-progress"
    assert commands("advplug train \\\n    --epochs 2   # two\n# only a comment\n\nmake demo") == \
        ["advplug train --epochs 2", "make demo"]


def test_every_readme_has_runnable_examples():
    for readme in READMES:
        runnable = [b for b in code_blocks(readme.read_text()) if b[0] in ("bash", "python")]
        assert runnable, f"{readme} shows no bash or python example"


@pytest.mark.parametrize("readme", READMES, ids=[str(r.relative_to(REPO)) for r in READMES])
def test_readme_examples_run_as_written(readme, tmp_path, data_root):
    ran = run_readme(readme, tmp_path)
    assert ran
