"""The READMEs' figures are exactly what benchmarks/report.py renders from benchmarks/results/*.json."""
from __future__ import annotations

import json
import re

import pytest

from benchmarks import report


def test_readmes_hold_what_the_report_renders():
    assert report.differences(report.read_readmes()) == []


def test_a_changed_figure_is_named(tmp_path):
    texts = report.read_readmes()
    for readme in texts:  # work on copies: the checked-in files stay untouched
        (tmp_path / readme).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / readme).write_text(texts[readme])
    bench = tmp_path / report.BENCH_README
    text = bench.read_text()
    # one digit of the compiled SPS in the CleanRL table, whatever the JSON says today
    changed = re.sub(r"(\| fkernel, compiled \| )(\d)", lambda m: m[1] + str((int(m[2]) + 1) % 10), text, count=1)
    assert changed != text
    bench.write_text(changed)
    problems = report.differences(report.read_readmes(tmp_path))
    assert problems == [f"cleanrl: {report.BENCH_README} differs from what benchmarks.report renders"]
    # and rendering puts the figure back
    fixed = report.render(bench.read_text(), report.BENCH_README)
    assert fixed == texts[report.BENCH_README]


def test_a_missing_block_is_named():
    texts = report.read_readmes()
    texts[report.README] = texts[report.README].replace("<!-- report:precision -->", "")
    assert "precision: no <!-- report:precision --> block in README.md" in report.differences(texts)


def _perturbed(value):
    """Every float scaled and every digit of a free-text value (such as a logged line) shifted, so that
    a renderer that reads a figure renders another one. Keys and short strings (names) stay."""
    if isinstance(value, float):
        return value * 1.37 + 0.011
    if isinstance(value, str) and len(value) > 40:
        return value.translate(str.maketrans("0123456789", "1234567890"))
    if isinstance(value, dict):
        return {key: _perturbed(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_perturbed(v) for v in value]
    return value


@pytest.mark.parametrize("name", list(report.BLOCKS))
def test_each_block_is_rendered_from_its_json(name, monkeypatch):
    _, renderer = report.BLOCKS[name]
    today = renderer()
    read = []

    def load(file: str) -> dict:
        read.append(file)
        return _perturbed(json.loads((report.RESULTS / file).read_text()))

    monkeypatch.setattr(report, "load", load)
    assert renderer() != today, f"{name} renders the same from other figures: it does not read its JSON"
    assert read, f"{name} reads no JSON"
