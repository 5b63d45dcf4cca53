import json

import torch
from click.testing import CliRunner
from rich.console import Console

from cli.main import cli
from cli.render import STATUS_STYLE, grad_table
from kernel.telemetry import classify, jsonable


def planted():
    return {
        "trunk": {"norm": 0.8, "max_abs": 0.2, "nan": 0.0, "inf": 0.0, "zero_frac": 0.0, "update_ratio": 1e-3},
        "heads.op": {"norm": float("nan"), "max_abs": float("nan"), "nan": 12.0, "inf": 0.0, "zero_frac": 0.0,
                     "update_ratio": float("nan")},
        "heads.slot": {"norm": 0.0, "max_abs": 0.0, "nan": 0.0, "inf": 0.0, "zero_frac": 1.0, "update_ratio": 0.0},
    }


def test_grad_table_rows_and_flags():
    console = Console(record=True, width=120, force_terminal=True, color_system="truecolor")
    groups = planted()
    groups["trunk"]["status"] = classify(groups["trunk"], reference=1.0)  # as the live view sets it
    console.print(grad_table(groups, "grads", {"trunk": "bf16", "heads.op": "fp32", "heads.slot": "fp32"}))
    text = console.export_text()
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 3}
    assert set(rows) == {"trunk", "heads.op", "heads.slot"}
    assert "healthy" in rows["trunk"] and "bf16" in rows["trunk"]
    assert "non-finite" in rows["heads.op"] and "12" in rows["heads.op"] and "nan" in rows["heads.op"]
    assert "dead" in rows["heads.slot"]
    assert [classify(s) for s in planted().values()] == ["finite", "non-finite", "dead"]  # no reference norm
    assert "red" in STATUS_STYLE["non-finite"] and "yellow" in STATUS_STYLE["dead"]
    assert STATUS_STYLE["healthy"] == "green"
    html = console.export_html()
    assert "#800000" in html or "#ff0000" in html or "color: #" in html  # colours were emitted


def test_jsonable_writes_non_finite_as_null():
    got = jsonable({"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5], "c": torch.tensor(float("nan"))})
    assert got == {"a": None, "b": [None, None, 1.5], "c": None}


def test_grads_json_reports_each_precision_and_group():
    result = CliRunner().invoke(cli, ["grads", "--json", "--precision", "fp32,bf16", "--num-envs", "2",
                                      "--num-steps", "16"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) == {"fp32", "bf16"}
    for name, groups in report.items():
        assert set(groups) == {"trunk", "heads.action", "value"}
        for stats in groups.values():
            assert {"norm", "max_abs", "nan", "inf", "zero_frac", "update_ratio", "status"} <= set(stats)
            # fp32 has no reference norm; bf16's norms are measured against fp32's.
            expected = ("finite",) if name == "fp32" else ("healthy", "small", "large", "very large", "vanishing")
            assert stats["status"] in expected


def test_grads_rejects_bad_precision():
    result = CliRunner().invoke(cli, ["grads", "--precision", "fp32,fp8"])
    assert result.exit_code == 2 and "fp8" in result.output and "Traceback" not in result.output


def test_sparkline_scales_between_min_and_max():
    from cli.render import SPARK, sparkline

    assert sparkline([0.0, 5.0, 10.0]) == SPARK[0] + SPARK[4] + SPARK[-1]
    assert sparkline([float("nan"), 3.0, 3.0]) == " " + SPARK[0] * 2
    assert sparkline([]) == ""


def test_the_live_view_names_the_tier_and_the_switch_line_its_verdict():
    from cli.render import switch_line, tier

    assert tier(False, 0, 5, None) == "eager"
    assert tier(True, 0, 0, None) == "compiling at update 0"
    assert tier(True, 3, 1, None) == "eager; compiles and checks at update 3"
    assert tier(True, 3, 3, None) == "compiling at update 3"
    assert tier(True, 3, 4, 4) == "compiled since update 4"
    assert tier(True, 3, 6, None) == "eager (the compiled update disagreed at update 3)"
    assert tier(True, None, 6, None) == "eager; compiled code checked, it takes over at the next update"
    agreed = {"update": 3, "agreed": True, "problems": [], "largest_gap": {"update": [2e-6, "params.w"]},
              "allowed": {"update": 1e-5}}
    assert "agreed" in switch_line(agreed) and "2.0e-06" in switch_line(agreed)
    wrong = dict(agreed, agreed=False, problems=["params.w: update differs by 1.0e-01", "params.b: ..."])
    assert switch_line(wrong) == ("stayed eager: at update 3 the compiled update disagreed with the eager one: "
                                  "params.w: update differs by 1.0e-01 (and 1 more)")
