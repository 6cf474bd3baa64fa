"""bench/results.json keeps the sizes a run did not measure (`make bench BENCH_ARGS='--sizes 10000'`)."""

from __future__ import annotations

import json

from bench.run import merged_results, seconds_summary


def test_a_run_replaces_only_the_sizes_it_measured(tmp_path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"results": [{"flows": 100, "x": 1}, {"flows": 1000, "x": 2}]}))

    merged = merged_results(path, [{"flows": 10000, "x": 4}, {"flows": 1000, "x": 3}])

    assert [(r["flows"], r["x"]) for r in merged["results"]] == [(100, 1), (1000, 3), (10000, 4)]
    assert "measured" not in merged["results"][0] and merged["results"][2]["measured"] == merged["generated"]


def test_a_missing_or_broken_file_starts_afresh(tmp_path) -> None:
    assert [r["flows"] for r in merged_results(tmp_path / "none.json", [{"flows": 5}])["results"]] == [5]
    (tmp_path / "bad.json").write_text("{")
    assert [r["flows"] for r in merged_results(tmp_path / "bad.json", [{"flows": 5}])["results"]] == [5]


def test_percentiles_of_the_reactions() -> None:
    summary = seconds_summary([float(i) for i in range(1, 101)])
    assert (summary["p50"], summary["p99"], summary["max"], summary["samples"]) == (50.5, 100.0, 100.0, 100)
