import json

from click.testing import CliRunner

from cli.main import cli


def test_bench_tiny_configuration_writes_consistent_json(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", "--modes", "eager,default,reduce-overhead", "--precisions", "fp32",
                                      "--minibatch", "16", "--iters", "3", "--warmup", "1", "--threads", "1",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert {"torch", "device", "threads", "config", "cells"} <= set(record) and record["threads"] == 1
    assert record["complete"] is True
    cells = record["cells"]
    assert {(c["target"], c["mode"]) for c in cells} == {(t, m) for t in ("update", "rollout")
                                                        for m in ("eager", "default", "reduce-overhead")}
    for c in cells:
        assert c["p10_ms"] <= c["median_ms"] <= c["p90_ms"] and c["median_ms"] > 0
        eager = next(e for e in cells if e["mode"] == "eager" and e["target"] == c["target"])
        assert abs(c["speedup_vs_eager"] - eager["median_ms"] / c["median_ms"]) < 1e-9
        if c["mode"] == "eager":
            assert c["graphs"] == 0 and c["compile_s"] == 0
        else:
            assert c["graphs"] == 1 and c["graph_breaks"] == 0 and c["recompiles"] == 0 and c["compile_s"] > 0
        assert c["peak_mem_mb"] > 0
    assert any("CUDA graphs" in c.get("note", "") for c in cells if c["mode"] == "reduce-overhead")


def test_bench_bad_input():
    for args, needle in ((["--modes", "turbo"], "turbo"), (["--precisions", "fp8"], "fp8"),
                         (["--minibatch", "0"], ">= 1"), (["--minibatch", "a,b"], "comma-separated")):
        result = CliRunner().invoke(cli, ["bench", *args])
        assert result.exit_code == 2 and needle in result.output, result.output
