"""`python -m benchmarks`: one run prints one table of positive time ratios (tiny sizes here)."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_entry():
    spec = importlib.util.spec_from_file_location("benchmarks_main", REPO / "benchmarks" / "__main__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_entry_table(data_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADVPLUG_DATA", str(data_root))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.md"
    result = load_entry().main(["--subset", "64", "--repeats", "1", "--out", str(out)])
    names = [r["comparison"] for r in result["rows"]]
    assert names == ["engine standard: advplug / bare loop", "engine pgd-at(10): advplug / bare loop",
                     "ART AdversarialTrainerMadryPGD / advplug pgd-at(10)",
                     "ART AdversarialTrainerFBFPyTorch / advplug fgsm-rs",
                     "recipes fgsm-rs / standard", "recipes fgsm-sdi / standard", "recipes pgd-at(10) / standard"]
    assert all(r["ratio"] > 0 and r["a_img_s"] > 0 and r["b_img_s"] > 0 for r in result["rows"])
    printed = capsys.readouterr().out
    assert printed == out.read_text() and printed.count("\n| ") == 1 + len(names)
    assert json.loads(out.with_suffix(".json").read_text())["machine"]["subset"] == 64


def test_bench_entry_rejects_unknown_group():
    with pytest.raises(SystemExit):
        load_entry().parse(["--only", "engine,nope"])
