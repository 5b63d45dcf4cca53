import json
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli

REFERENCE = Path(__file__).resolve().parents[2] / "checkpoints" / "cartpole-ppo-seed0.safetensors"


def test_reference_checkpoint_solves_cartpole():
    result = CliRunner().invoke(cli, ["eval", str(REFERENCE), "--episodes", "100", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["episodes"] == 100 and report["mean_return"] >= 475


def test_reference_checkpoint_also_solves_with_sampled_actions():
    result = CliRunner().invoke(cli, ["eval", str(REFERENCE), "--episodes", "50", "--stochastic", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["mean_return"] >= 475


def test_reference_checkpoint_resumes(tmp_path):
    """It is a whole training state: one more update continues from it."""
    out = tmp_path / "more"
    result = CliRunner().invoke(cli, ["train", "--resume", str(REFERENCE), "--out", str(out), "--no-compile",
                                      "--total-steps", str(500_000 + 512), "--checkpoint-every", "0"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "summary.json").read_text())
    assert meta["env_steps"] == 499_712 + 512
