"""The app's run history: rows, de-duplication of a stopped run, exports and the Pareto chart."""

import csv
import io
import json

from layercache.studio import history

METRICS = {"method": "LayerCache", "psnr_db": 41.2, "ssim": 0.99, "lpips": None, "wall_speedup": 1.8,
           "compute_speedup": 2.0, "compute_fraction": 0.5, "time_uncached_s": 1.1, "time_cached_s": 0.6}
SETTINGS = {"model": "tiny", "method": "LayerCache", "steps": 20, "budget": 0.5, "groups": 4, "max_k": 4}


def test_a_finished_run_adds_one_row_in_column_order():
    rows = history.add_run([], METRICS, SETTINGS)
    assert len(rows) == 1 and list(rows[0]) == list(history.COLUMNS)
    assert rows[0]["psnr_db"] == 41.2 and rows[0]["budget"] == 0.5 and rows[0]["method"] == "LayerCache"
    assert history.table(rows) == [[rows[0][c] for c in history.COLUMNS]]


def test_the_same_metrics_again_add_nothing_even_under_new_settings():
    rows = history.add_run([], METRICS, SETTINGS)
    assert history.add_run(rows, METRICS, {**SETTINGS, "budget": 0.3}) == rows   # a stopped run: stale metrics
    assert history.add_run(rows, None, SETTINGS) == rows and history.add_run(rows, {}, SETTINGS) == rows
    second = history.add_run(rows, {**METRICS, "psnr_db": 35.0, "time_cached_s": 0.4}, {**SETTINGS, "budget": 0.3})
    assert len(second) == 2 and len(rows) == 1   # a new list: the state is replaced, never mutated


def test_exports_hold_every_row(tmp_path):
    rows = history.add_run(history.add_run([], METRICS, SETTINGS), {**METRICS, "psnr_db": 30.0}, SETTINGS)
    csv_path, json_path = history.write_exports(rows, tmp_path / "session")
    parsed = list(csv.DictReader(io.StringIO(open(csv_path).read())))
    assert [float(r["psnr_db"]) for r in parsed] == [41.2, 30.0] and list(parsed[0]) == list(history.COLUMNS)
    assert json.loads(open(json_path).read()) == rows


def test_pareto_draws_runs_by_method_over_the_benchmark():
    background = history.benchmark_records("tiny", 20)
    assert background and {r["steps"] for r in background} == {20}
    assert history.benchmark_records("flux-dev", 20) == [] and history.benchmark_records("tiny", 7) == []
    rows = history.add_run([], METRICS, SETTINGS)
    rows = history.add_run(rows, {**METRICS, "method": "MeanCache", "psnr_db": 33.0}, SETTINGS)
    rows = history.add_run(rows, {**METRICS, "psnr_db": "inf", "compute_speedup": 1.0}, SETTINGS)   # budget 1
    fig = history.pareto(rows, background, ["LayerCache", "MeanCache"])
    runs = [t for t in fig.data if t.mode == "markers"]
    assert [t.name for t in runs] == ["LayerCache", "MeanCache"]
    assert list(runs[0].y) == [41.2] and list(runs[1].y) == [33.0]          # an infinite PSNR is not drawn
    assert runs[0].marker.color != runs[1].marker.color
    assert any(t.name.startswith("benchmark: ") and t.opacity < 1 for t in fig.data)
