"""Curves of a run: TensorBoard event files read back with tensorboard's own reader, and `fkernel
plot` PNGs; both refuse cleanly when their optional extra is missing."""
import struct
import sys

import pytest
from click.testing import CliRunner

from cli.main import cli
from kernel import curves

TINY = ["--num-envs", "2", "--num-steps", "16", "--total-steps", "96", "--no-compile", "--threads", "1"]


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    board = base / "tb"
    for name, extra in (("fp32", ["--tensorboard", str(board)]), ("bf16", ["--precision", "bf16"])):
        r = invoke("train", *TINY, "--out", str(base / name), *extra)
        assert r.exit_code == 0, r.output
    return base, board


def test_event_file_holds_the_expected_tags_and_steps(two_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, board = two_runs
    events = EventAccumulator(str(board))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("charts/mean_return", "charts/SPS", "charts/learning_rate", "charts/loss_scale",
                "charts/skipped_steps", "losses/policy_loss", "losses/value_loss", "losses/entropy",
                "losses/approx_kl", "losses/clipfrac", "losses/explained_variance", "grads/trunk/norm",
                "grads/heads.action/decisions", "grads/value/max_abs"):
        assert tag in tags, tag
    steps = [e.step for e in events.Scalars("losses/value_loss")]
    assert steps == [32, 64, 96]  # three updates of 2 envs x 16 steps, logged at env steps
    lr = [e.value for e in events.Scalars("charts/learning_rate")]
    assert lr[0] == pytest.approx(2.5e-4) and lr[-1] < lr[0]  # the annealed rate each update used


def png_size(path) -> tuple:
    data = open(path, "rb").read(24)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_png_of_the_expected_size(two_runs, tmp_path):
    base, _ = two_runs
    r = invoke("plot", str(base / "fp32"), "--out", str(tmp_path / "one.png"))
    assert r.exit_code == 0, r.output
    assert png_size(tmp_path / "one.png") == (1200, 800)
    assert invoke("plot", str(base / "fp32")).exit_code == 0
    assert (base / "fp32" / "curves.png").exists()  # default: inside the run folder


def test_a_plot_of_two_runs_has_two_return_curves(two_runs, tmp_path):
    base, _ = two_runs
    fig = curves.plot_runs([base / "fp32", base / "bf16"], tmp_path / "two.png", solved_return=475.0)
    returns_axis = fig.axes[0]
    labels = [line.get_label() for line in returns_axis.get_lines()]
    assert labels == ["fp32", "bf16", "solved (475)"]


def test_missing_extras_are_one_line_usage_errors(tmp_path, monkeypatch, two_runs):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    r = invoke("train", *TINY, "--out", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb"))
    assert r.exit_code == 2 and "[tensorboard]" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()  # refused before anything was written
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    base, _ = two_runs
    r = invoke("plot", str(base / "fp32"), "--out", str(tmp_path / "x.png"))
    assert r.exit_code == 2 and "[plot]" in r.output and "Traceback" not in r.output


def test_plot_bad_inputs(tmp_path, two_runs):
    r = invoke("plot", str(tmp_path / "nothing-here"))
    assert r.exit_code == 2 and "telemetry.jsonl" in r.output
    base, _ = two_runs
    r = invoke("plot", str(base / "fp32"), "--out", str(tmp_path / "x.jpg"))
    assert r.exit_code == 2 and ".png" in r.output


def test_a_group_folder_is_drawn_as_its_mean_with_the_band_of_its_runs(tmp_path):
    import json

    import numpy as np

    group = tmp_path / "group"
    returns = {0: [1.0, 4.0, 9.0], 1: [3.0, 2.0, 6.0], 2: [2.0, 9.0, 0.0]}
    for r, values in returns.items():
        (group / f"run-{r}").mkdir(parents=True)
        rows = [{"env_steps": 10 * (i + 1), "mean_return": v, "pg_loss": r, "v_loss": 1.0, "entropy": 0.5,
                 "grads": {"trunk": {"norm": 1.0 + r, "status": "dead" if (r, i) == (2, 1) else "ok"}}}
                for i, v in enumerate(values)]
        (group / f"run-{r}" / "telemetry.jsonl").write_text("\n".join(json.dumps(x) for x in rows))
    fig = curves.plot_runs([group], tmp_path / "g.png")
    (mean_line,) = fig.axes[0].get_lines()
    assert mean_line.get_label() == "group (mean of 3)"
    assert np.allclose(mean_line.get_ydata(), [2.0, 5.0, 5.0])
    band = fig.axes[0].collections[0].get_paths()[0].vertices[:, 1]
    assert set(np.round(band, 6)) == {1.0, 2.0, 0.0, 3.0, 9.0}  # lowest and highest return of each update
    (grad_line, dead) = fig.axes[2].get_lines()
    assert np.allclose(grad_line.get_ydata(), [2.0, 2.0, 2.0]) and "dead" in dead.get_label()
    r = invoke("plot", str(group), "--out", str(tmp_path / "cli.png"))
    assert r.exit_code == 0, r.output
