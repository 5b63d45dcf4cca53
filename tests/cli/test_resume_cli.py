"""Resume through the CLI: after a SIGKILL, with conflicting flags, and the non-finite stop."""
import os
import signal
import subprocess
import sys
import time

import torch
from click.testing import CliRunner

import kernel.build
from cli.main import cli
from kernel import checkpoint
from kernel.resume import latest_checkpoint

# One thread everywhere: a different thread count changes float reduction order, not resume.
TINY = ["--num-envs", "2", "--num-steps", "16", "--no-compile", "--seed", "4", "--threads", "1"]


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def tensors(path):
    return checkpoint.flatten_sections(checkpoint.load(path)[0])


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    total = str(2 * 16 * 120)
    straight = invoke("train", *TINY, "--total-steps", total, "--out", str(tmp_path / "straight"),
                      "--checkpoint-every", "5")
    assert straight.exit_code == 0, straight.output

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "train", *TINY, "--total-steps", total,
                             "--out", str(killed), "--checkpoint-every", "5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while latest_checkpoint(killed) is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "params.safetensors").exists()

    resumed = invoke("train", "--out", str(killed), "--resume", "latest", "--threads", "1")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming at update" in resumed.output
    a, b = tensors(tmp_path / "straight" / "params.safetensors"), tensors(killed / "params.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_conflicting_config_and_allows_total_steps(tmp_path):
    out = tmp_path / "run"
    assert invoke("train", *TINY, "--total-steps", "96", "--out", str(out), "--checkpoint-every", "1").exit_code == 0
    before = (out / "params.safetensors").read_bytes()
    bad = invoke("train", "--out", str(out), "--resume", "latest", "--num-envs", "3", "--seed", "9")
    assert bad.exit_code == 2 and "num_envs=3" in bad.output and "seed=9" in bad.output
    assert "Traceback" not in bad.output
    assert (out / "params.safetensors").read_bytes() == before  # nothing overwritten
    done = invoke("train", "--out", str(out), "--resume", "latest")
    assert done.exit_code == 2 and "raise total_steps (--total-steps)" in done.output
    more = invoke("train", "--out", str(out), "--resume", "latest", "--total-steps", "160")
    assert more.exit_code == 0, more.output
    assert checkpoint.load(out / "params.safetensors")[1]["update"] == 5
    # The annealed learning rate is re-planned for the new total, and the run says so.
    said = " ".join(more.output.split())
    assert "anneals to 0 at update 5 instead of 3, so at update 3 it is 0.0001 (the saved schedule had 0)" in said


def test_resume_bad_inputs(tmp_path):
    r = invoke("train", "--resume", "latest")
    assert r.exit_code == 2 and "--out" in r.output
    r = invoke("train", "--out", str(tmp_path / "empty"), "--resume", "latest")
    assert r.exit_code == 2 and "no checkpoints" in r.output
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(256))
    r = invoke("train", "--resume", str(junk))
    assert r.exit_code == 2 and "truncated or corrupt" in r.output and "Traceback" not in r.output
    r = invoke("train", "--resume", str(tmp_path / "nope.safetensors"))
    assert r.exit_code == 2 and "no checkpoint file" in r.output


def test_non_finite_run_stops_with_table_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real_gae = kernel.build.gae
    calls = {"n": 0}

    def poisoned_gae(*args, **kw):  # advantages turn NaN from the third update on
        calls["n"] += 1
        adv, ret = real_gae(*args, **kw)
        return (adv * float("nan"), ret) if calls["n"] > 3 else (adv, ret)  # call 1 is the warm-up

    monkeypatch.setattr(kernel.build, "gae", poisoned_gae)
    out = tmp_path / "run"
    r = invoke("train", *TINY, "--total-steps", "640", "--out", str(out), "--checkpoint-every", "1",
               "--max-bad-steps", "6")
    assert r.exit_code == 1, r.output
    assert "consecutive steps had a non-finite loss or gradient" in r.output
    assert "last good checkpoint" in r.output and "non-finite" in r.output  # table rows flagged
    assert not (out / "params.safetensors").exists()
    last = latest_checkpoint(out)
    assert last is not None
    sections, meta = checkpoint.load(last)
    assert all(torch.isfinite(t).all() for t in checkpoint.flatten_sections({"p": sections["params"]}).values())


def test_inspect_shows_metadata_and_tensors(tmp_path):
    out = tmp_path / "run"
    assert invoke("train", *TINY, "--total-steps", "64", "--out", str(out)).exit_code == 0
    r = CliRunner().invoke(cli, ["inspect", str(out / "params.safetensors")], terminal_width=200)
    assert r.exit_code == 0, r.output
    for needle in ("cartpole", "params/heads.action.w", "[2, 64]", "float32", "opt_state/inner.adam.count",
                   "torch version"):
        assert needle in r.output, needle
    r = invoke("inspect", str(tmp_path / "nope"))
    assert r.exit_code == 2 and "no checkpoint file" in r.output
