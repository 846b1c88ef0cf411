"""RobustBench leaderboards on the real model_info files (RobustBench commit 78fcc9e)."""
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from advplug.benchmark import leaderboard as lb
from advplug.benchmark.model_info import build_model_info, write_model_info
from advplug.errors import AdvplugError

MODEL_INFO = Path(__file__).resolve().parents[1].parent / "shared" / "robustbench" / "model_info"


@pytest.fixture(scope="module")
def root():
    if not (MODEL_INFO / "cifar10" / "Linf").is_dir():
        pytest.skip(f"RobustBench model_info not found at {MODEL_INFO}")
    return MODEL_INFO


@pytest.fixture(scope="module")
def linf(root):
    return lb.load_leaderboard(root, "cifar10", "Linf")


def by_model(rows):
    return {r.model: r for r in rows}


def result(robust, n_examples=10000, dataset="cifar10"):
    return build_model_info(name="mine", dataset=dataset, threat="Linf", eps=8 / 255, clean_acc=0.80,
                            robust_acc=robust, architecture="PreActResNet-18",
                            advplug={"n_examples": n_examples, "seed": 0})


def test_cifar10_linf_parses_all_99(linf):
    assert len(linf.rows) == 99 and linf.problems == []
    assert [r.rank for r in linf.rows] == list(range(1, 100))
    rows = by_model(linf.rows)
    wong, zhang = rows["Wong2020Fast"], rows["Zhang2019Theoretically"]
    assert (float(wong.entry["clean_acc"]), wong.robust, wong.robust_field) == (83.34, 43.21, "autoattack_acc")
    assert (float(zhang.entry["clean_acc"]), zhang.robust) == (84.92, 53.08)
    robust = [r.robust for r in linf.rows]
    assert robust == sorted(robust, reverse=True)


def test_ranked_by_external_where_present(linf):
    top = linf.rows[0]
    assert (top.model, top.robust, top.rank) == ("Bartoldson2024Adversarial_WRN-94-16", 73.71, 1)
    sparse = by_model(linf.rows)["Amini2024MeanSparse_S-WRN-94-16"]
    # AutoAttack says 75.28 (> 73.71), but RobustBench ranks by the adaptive 73.10
    assert float(sparse.entry["autoattack_acc"]) == 75.28
    assert (sparse.robust, sparse.robust_field, sparse.rank) == (73.10, "external", 2)
    text = lb.render(linf.rows, "text")
    assert "73.10*" in text and lb.EXTERNAL_NOTE in text
    unreliable = [r.model for r in linf.rows if r.entry.get("unreliable")]
    assert sorted(unreliable) == ["Kang2021Stable", "Xiao2020Enhancing"]
    assert "Kang2021Stable [unreliable]" in text


def test_other_threats_load(root):
    l2 = lb.load_leaderboard(root, "cifar10", "L2")
    assert (len(l2.rows), l2.problems) == (21, [])
    assert (l2.rows[0].model, l2.rows[0].robust) == ("Wang2023Better_WRN-70-16", 84.97)
    corr = lb.load_leaderboard(root, "cifar10", "corruptions")
    assert (len(corr.rows), corr.problems) == (23, [])  # unaggregated_results.csv is not an entry
    assert {r.robust_field for r in corr.rows} == {"corruptions_acc"}
    # a tie at 92.78 is broken by clean accuracy (96.73 before 96.56)
    assert [(r.model, r.robust) for r in corr.rows[:2]] == [
        ("Erichson2022NoisyMix", 92.78), ("Diffenderfer2021Winning_LRR_CARD_Deck", 92.78)]


def test_imagenet_corruptions_loads_all(root):
    board = lb.load_leaderboard(root, "imagenet", "corruptions")
    assert (len(board.rows), board.problems) == (12, [])


def test_forgiving_layouts(root, linf):
    for where in (root / "cifar10" / "Linf", root / "cifar10", root.parent):
        board = lb.load_leaderboard(where, "cifar10", "Linf")
        assert [r.model for r in board.rows] == [r.model for r in linf.rows]
    with pytest.raises(AdvplugError, match="holds the cifar10/L2 leaderboard, not cifar10/Linf"):
        lb.load_leaderboard(root / "cifar10" / "L2", "cifar10", "Linf")


def test_insert_at_rank(linf):
    wong = by_model(linf.rows)["Wong2020Fast"]
    tie = linf.insert(result(0.4321), "mine")
    assert len(tie) == 100
    i = [r.model for r in tie].index("mine")
    assert tie[i - 1].model == "Wong2020Fast" and tie[i].is_user and tie[i].rank == wong.rank
    assert tie[i + 1].rank == wong.rank + 2  # everything below moves down one
    above = linf.insert(result(0.4322), "mine")
    i = [r.model for r in above].index("mine")
    assert above[i + 1].model == "Wong2020Fast" and above[i].rank == wong.rank
    assert above[i + 1].rank == wong.rank + 1
    first = linf.insert(result(0.80), "mine")
    assert first[0].is_user and first[0].rank == 1 and first[1].rank == 2
    assert [r.model for r in linf.rows].count("mine") == 0  # the board itself is unchanged


def test_renders_mark_the_user_row(linf):
    rows = linf.insert(result(0.4322), "mine")
    text = lb.render(rows, "text")
    assert any(line.startswith(">>") and "mine" in line and "43.22" in line for line in text.splitlines())
    md = lb.render(rows, "markdown")
    assert "| **mine** | **80.00** | **43.22** |" in md
    page = lb.render(rows, "html")
    assert '<tr class="advplug-user"><td><strong>' in page and "<strong>mine</strong>" in page
    data = json.loads(lb.render(rows, "json"))
    mine = [d for d in data if d["is_user"]]
    assert len(mine) == 1 and mine[0]["model"] == "mine" and mine[0]["robust_acc"] == 43.22
    assert mine[0]["rank"] == by_model(linf.rows)["Wong2020Fast"].rank
    sparse = next(d for d in data if d["model"] == "Amini2024MeanSparse_S-WRN-94-16")
    assert (sparse["robust_field"], sparse["external"], sparse["autoattack_acc"]) == ("external", 73.10, 75.28)
    with pytest.raises(AdvplugError, match="--format 'csv'"):
        lb.render(rows, "csv")


def test_html_escapes(linf):
    entry = {**result(0.5), "architecture": "<script>x</script> & co"}
    assert "&lt;script&gt;x&lt;/script&gt; &amp; co" in lb.render(linf.insert(entry, "a<b"), "html")


def test_reduced_n_note(linf, tmp_path):
    path = write_model_info(result(0.4322, n_examples=1000), tmp_path / "mine.json")
    model, entry = lb.load_result(path, "Linf", "cifar10")
    rows = linf.insert(entry, model)
    for fmt in ("text", "markdown", "html"):
        out = lb.render(rows, fmt)
        assert "1,000 examples" in out and "10,000" in out and "not strictly comparable" in out
    mine = next(d for d in json.loads(lb.render(rows, "json")) if d["is_user"])
    assert mine["n_examples"] == 1000 and "not strictly comparable" in mine["note"]
    assert "not strictly comparable" not in lb.render(linf.insert(result(0.4322), "mine"), "text")
    imagenet = lb.Row(1, "mine", result(0.4, n_examples=5000, dataset="imagenet"), 40.0, "autoattack_acc", True)
    assert lb.reduced_n_note(imagenet) is None
    assert "5,000" in lb.reduced_n_note(lb.Row(1, "m", result(0.4, 4999, "imagenet"), 40.0, "x", True))


def test_bad_files_are_skipped_and_named(root, tmp_path):
    folder = tmp_path / "model_info" / "cifar10" / "Linf"
    shutil.copytree(root / "cifar10" / "Linf", folder)
    (folder / "Broken.json").write_text('{"name": "oops",')
    (folder / "AList.json").write_text("[1, 2]")
    wong = json.loads((folder / "Wong2020Fast.json").read_text())
    del wong["clean_acc"]
    (folder / "Wong2020Fast.json").write_text(json.dumps(wong))
    board = lb.load_leaderboard(tmp_path / "model_info", "cifar10", "Linf")
    problems = dict(board.problems)
    assert set(problems) == {"Broken.json", "AList.json", "Wong2020Fast.json"}
    assert "not valid JSON" in problems["Broken.json"]
    assert "JSON object" in problems["AList.json"]
    assert "'clean_acc'" in problems["Wong2020Fast.json"]
    assert len(board.rows) == 98 and "Wong2020Fast" not in by_model(board.rows)
    assert "Zhang2019Theoretically" in lb.render(board.rows, "text")
    assert any("Broken.json" in w for w in board.warnings())


def test_missing_or_empty_dir(tmp_path):
    with pytest.raises(AdvplugError, match="does not exist") as exc:
        lb.load_leaderboard(tmp_path / "nope", "cifar10", "Linf")
    assert str(tmp_path / "nope") in str(exc.value) and "<dataset>/<threat>" in str(exc.value)
    (tmp_path / "cifar10" / "Linf").mkdir(parents=True)
    with pytest.raises(AdvplugError, match="no leaderboard files for cifar10/Linf"):
        lb.load_leaderboard(tmp_path, "cifar10", "Linf")
    with pytest.raises(AdvplugError, match="--threat 'Linf2'"):
        lb.load_leaderboard(tmp_path, "cifar10", "Linf2")


def test_load_result_errors(tmp_path):
    with pytest.raises(AdvplugError, match="no such file") as exc:
        lb.load_result(tmp_path / "missing.json", "Linf")
    assert "missing.json" in str(exc.value)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(AdvplugError, match="bad.json.*not valid JSON"):
        lb.load_result(bad, "Linf")
    bad.write_text(json.dumps({"name": "x"}))
    with pytest.raises(AdvplugError, match="missing field 'clean_acc'.*missing field 'autoattack_acc'"):
        lb.load_result(bad, "Linf")
    path = write_model_info(result(0.5, dataset="cifar100"), tmp_path / "c100.json")
    with pytest.raises(AdvplugError, match="on cifar100, the leaderboard on cifar10"):
        lb.load_result(path, "Linf", "cifar10")


def offline(monkeypatch):
    calls = []

    def urlopen(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("network is unreachable")
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return calls


def test_fetch_offline_says_leaderboard_dir(monkeypatch, tmp_path):
    calls = offline(monkeypatch)
    with pytest.raises(AdvplugError, match="could not fetch.*--leaderboard-dir DIR"):
        lb.fetch_leaderboard("cifar10", "Linf", cache_dir=tmp_path / "cache")
    assert len(calls) == 1 and not (tmp_path / "cache" / "cifar10" / "Linf").exists()
    monkeypatch.setenv("ADVPLUG_CACHE", str(tmp_path / "env"))
    assert lb.cache_root() == tmp_path / "env" / "robustbench" / "model_info"
    with pytest.raises(AdvplugError, match="--leaderboard-dir"):
        lb.resolve_leaderboard_dir(None, "cifar10", "L2")


def test_cached_copy_used_without_network(monkeypatch, tmp_path, root):
    calls = offline(monkeypatch)
    monkeypatch.setenv("ADVPLUG_CACHE", str(tmp_path))
    cache = tmp_path / "robustbench" / "model_info"
    shutil.copytree(root / "cifar10" / "L2", cache / "cifar10" / "L2")
    where = lb.resolve_leaderboard_dir(None, "cifar10", "L2")
    assert where == cache and calls == []
    assert len(lb.load_leaderboard(where, "cifar10", "L2").rows) == 21
    assert lb.resolve_leaderboard_dir(root, "cifar10", "L2") == root and calls == []


def test_fetch_downloads_into_cache(monkeypatch, tmp_path, root):
    """A fake GitHub: the listing, then each file's download_url."""
    files = {p.name: p.read_bytes() for p in sorted((root / "cifar10" / "L2").glob("*.json"))}
    listing = [{"name": n, "type": "file", "download_url": f"https://raw/{n}"} for n in files]
    listing.append({"name": "README.md", "type": "file", "download_url": "https://raw/README.md"})

    class Response:
        def __init__(self, body):
            self.body = body

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return self.body

    def urlopen(req, timeout):
        url = req.full_url
        if url == lb.API_URL.format(dataset="cifar10", threat="L2"):
            return Response(json.dumps(listing).encode())
        return Response(files[url.rsplit("/", 1)[1]])
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    where = lb.fetch_leaderboard("cifar10", "L2", cache_dir=tmp_path / "c")
    assert where == tmp_path / "c"
    assert sorted(p.name for p in (where / "cifar10" / "L2").iterdir()) == sorted(files)
    assert [p.name for p in (where / "cifar10").iterdir()] == ["L2"]  # no leftover partial folder
    assert len(lb.load_leaderboard(where, "cifar10", "L2").rows) == 21
