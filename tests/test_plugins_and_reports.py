"""A broken plugin is skipped with one warning; `report` reads runs, never their shard parts."""
import sys

import pytest

from tract_eval.benchmarks import load_benchmark
from tract_eval.judges import Judge, build_judge
from tract_eval.registry import PluginWarning, Registry
from tract_eval.reports.runs import collect_runs
from tract_eval.runner import merge_shards, run_benchmark

from test_runner import LengthBackend


@pytest.fixture()
def broken_plugin(tmp_path, monkeypatch):
    """An installed distribution whose judge entry point fails to import."""
    dist = tmp_path / "broken_judge-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-judge\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tract_eval.judges]\nbroken = broken_judge_module:Judge\n")
    (tmp_path / "broken_judge_module.py").write_text("raise ImportError('needs a package that is not installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("broken_judge_module", None)


def test_a_broken_plugin_warns_once_and_the_built_ins_still_work(broken_plugin, monkeypatch, capsys):
    import tract_eval.judges as judges_module
    from tract_eval.cli import main

    fresh = Registry("judge", entry_point_group="tract_eval.judges")
    fresh.register("absolute")(Judge)
    monkeypatch.setattr(judges_module, "JUDGES", fresh)
    with pytest.warns(PluginWarning, match=r"judge plugin 'broken' .* failed to load and is skipped: ImportError") as caught:
        assert main(["list", "judges"]) == 0
        assert "tract" in capsys.readouterr().out
        assert "broken" not in fresh.names() and build_judge("tract", backend=LengthBackend()).name == "tract"
    assert len([w for w in caught if issubclass(w.category, PluginWarning)]) == 1
    with pytest.raises(KeyError, match="failed to load and is skipped"):
        fresh.get("broken")  # asking for it by name says why it is missing


def test_report_ignores_shard_folders(tmp_path, data_dir):
    bench = load_benchmark("vicuna", data_dir)
    for i in range(2):
        run_benchmark(build_judge("tract", backend=LengthBackend()), bench, tmp_path, limit=4, shard=(i, 2))
    run_benchmark(build_judge("rail", backend=LengthBackend()), bench, tmp_path, limit=4)
    assert [(r.judge, r.bench) for r in collect_runs([tmp_path])] == [("rail", "vicuna")]
    merge_shards(tmp_path / "tract" / "vicuna", bench)
    runs = collect_runs([tmp_path])
    assert sorted((r.judge, r.bench, len(r.rows)) for r in runs) == [("rail", "vicuna", 4), ("tract", "vicuna", 4)]
