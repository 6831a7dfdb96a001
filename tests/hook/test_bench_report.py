"""README's benchmark table is what bench/report.py makes of the committed run (issue 20).

No timing here: the benchmark runs on demand (bench/bench.py); this checks only that
the claims in README.md and docs/benchmark/results.md are generated from
docs/benchmark/results.json, unchanged by hand.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", REPO / "bench" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def results(report):
    return json.loads(report.RESULTS_JSON.read_text())


def test_readme_block_is_generated_from_the_committed_run(report, results):
    readme = (REPO / "README.md").read_text()
    a, b = readme.index(report.BEGIN), readme.index(report.END) + len(report.END)
    assert readme[a:b] == report.readme_block(results), "run: .venv/bin/python bench/report.py --results docs/benchmark/results.json"


def test_results_doc_is_generated_from_the_committed_run(report, results):
    plot = (REPO / "docs" / "benchmark" / "results.png").exists()
    assert report.RESULTS_MD.read_text() == report.results_md(results, plot)


def test_the_block_states_every_row_and_its_machine(report, results):
    block = report.readme_block(results)
    meta = results["meta"]
    assert meta["cpu_model"] in block and f"{meta['cpus']} cores" in block
    assert f"load average {meta['loadavg_start']:.2f}" in block
    rows = [ln for ln in block.splitlines() if ln.startswith("| ") and not ln.startswith("| path")]
    for what in ("precreate hook process alone", "callgrind instructions", "`podman run --rm`, runc",
                 "network policy", "images + 1,000 containers", "first start after a policy change",
                 "200 tiers", "20 `podman run --rm` at once", "50 `podman run --rm` at once", "`docker run --rm`",
                 "CRI pod start", "ExecSync"):
        assert any(what in ln for ln in rows), what


def test_rewrite_replaces_only_the_block(report):
    text = f"before\n{report.BEGIN}\nold\n{report.END}\nafter\n"
    assert report.rewrite(text, f"{report.BEGIN}\nnew\n{report.END}") == f"before\n{report.BEGIN}\nnew\n{report.END}\nafter\n"
    with pytest.raises(ValueError):
        report.rewrite("no markers", "x")


def test_cpu_split_groups_perf_samples_by_process(monkeypatch):
    """bench.py's CPU split: perf's per-process sample counts become ms per container, the
    container's runc init apart from runc, tiergate's front and warm helper as the hook, the
    benchmark's own process (a python too) under "other"."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # bench.py puts integration/ and bench/ first
    spec = importlib.util.spec_from_file_location("bench_main", REPO / "bench" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    hz, n = bench.PERF_HZ, 10
    perf = "\n".join([
        f"    50.00%   {hz * 10}   2001:podman           podman",
        f"    10.00%   {hz * 2}    2002:runc:[2:INIT]    runc:[2:INIT]",
        f"     5.00%   {hz}        2003:runc:[1:CHILD]   runc:[1:CHILD]",
        f"     5.00%   {hz}        2004:python           python",
        f"     5.00%   {hz}        2005:tiergate-hook    tiergate-hook",
        f"     5.00%   {hz * 3}    999:python            python",
        f"     5.00%   {hz}        0:swapper             swapper",
        f"     1.00%   {hz}        31:kworker/1:2H-kb    kworker/1:2H-kb",
        "# a comment line",
    ])
    got = bench.cpu_groups(perf, 999, n)
    assert got == {"podman": 1000.0, "conmon": 0.0, "runc init": 200.0, "runc": 100.0, "hook": 200.0,
                   "idle": 100.0, "kernel threads": 100.0, "other": 300.0}
