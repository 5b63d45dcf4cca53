import json

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli

TINY = ["--num-envs", "2", "--num-steps", "16", "--total-steps", "64", "--no-compile"]


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def assert_usage_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.output
    for needle in needles:
        assert needle in error_lines[0], error_lines[0]


@pytest.mark.parametrize("args, needles", [
    (["--env", "pendulum-v9"], ["unknown env", "pendulum-v9"]),
    (["--num-envs", "0"], ["num_envs", "positive"]),
    (["--num-steps", "-3"], ["num_steps", "positive"]),
    (["--total-steps", "0"], ["total_steps"]),
    (["--device", "cuda:7"], ["cuda"]),
    (["--device", "toaster"], ["device"]),
])
def test_train_rejects_bad_sizes_and_names(args, needles, tmp_path):
    result = invoke("train", *args, "--out", str(tmp_path / "run"))
    assert_usage_error(result, *needles)
    assert not (tmp_path / "run").exists()


def test_config_json_errors(tmp_path):
    missing = tmp_path / "missing.json"
    assert_usage_error(invoke("train", "--config-json", str(missing)), "cannot read config file")

    bad = tmp_path / "bad.json"
    bad.write_text("{num_envs: 4")
    assert_usage_error(invoke("train", "--config-json", str(bad)), "not valid JSON")

    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"num_envs": 4, "learning_rat": 0.1}))
    assert_usage_error(invoke("train", "--config-json", str(unknown)), "unknown config key", "learning_rat")

    not_obj = tmp_path / "list.json"
    not_obj.write_text("[1, 2]")
    assert_usage_error(invoke("train", "--config-json", str(not_obj)), "JSON object")

    wrong_type = tmp_path / "type.json"
    wrong_type.write_text(json.dumps({"num_envs": "four"}))
    assert_usage_error(invoke("train", "--config-json", str(wrong_type)), "num_envs")

    indivisible = tmp_path / "mb.json"
    indivisible.write_text(json.dumps({"num_envs": 4, "num_steps": 16, "num_minibatches": 3}))
    assert_usage_error(invoke("train", "--config-json", str(indivisible)), "num_minibatches=3", "does not divide")


@pytest.mark.parametrize("text, needles", [
    ('{"vf_coef": NaN}', ["vf_coef must be a finite number"]),
    ('{"ent_coef": Infinity}', ["ent_coef must be a finite number"]),
    ('{"max_grad_norm": Infinity}', ["max_grad_norm must be a finite number"]),
    ('{"ent_coef": -0.01}', ["ent_coef must be >= 0"]),
    ('{"vf_coef": -1}', ["vf_coef must be >= 0"]),
    ('{"max_grad_norm": -0.5}', ["max_grad_norm must be > 0"]),
    ('{"ent_coef_heads": {"action": -0.02}}', ["ent_coef_heads", "must be >= 0"]),
])
def test_non_finite_and_negative_values_are_usage_errors(text, needles, tmp_path):
    path = tmp_path / "values.json"
    path.write_text(text)  # Python's json reads NaN and Infinity; a user's file may hold them
    result = invoke("train", *TINY, "--config-json", str(path), "--out", str(tmp_path / "run"))
    assert_usage_error(result, *needles)
    assert not (tmp_path / "run").exists()


def test_summary_and_telemetry_are_strict_json(tmp_path):
    """A run too short to finish an episode has no mean return: null, not a bare NaN."""
    out = tmp_path / "run"
    result = invoke("train", "--num-envs", "2", "--num-steps", "4", "--total-steps", "8", "--no-compile",
                    "--checkpoint-every", "0", "--out", str(out), "--telemetry-dir", str(tmp_path / "tel"))
    assert result.exit_code == 0, result.output

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in JSON"))

    summary = strict((out / "summary.json").read_text())
    assert summary["mean_return"] is None
    records = [strict(line) for line in (tmp_path / "tel" / "telemetry.jsonl").read_text().splitlines()]
    assert records


def test_train_then_eval_end_to_end(tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"num_minibatches": 2, "hidden": [8, 8]}))
    result = invoke("train", *TINY, "--config-json", str(cfg), "--seed", "5", "--out", str(out))
    assert result.exit_code == 0, result.output
    ckpt = out / "params.safetensors"
    assert ckpt.is_file() and f"trained params: {ckpt}" in result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["hidden"] == [8, 8] and saved["num_minibatches"] == 2 and saved["seed"] == 5  # JSON then flags
    assert saved["num_envs"] == 2

    result = invoke("eval", str(ckpt), "--episodes", "3", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) == {"mean_return", "std_return", "episodes"} and report["episodes"] == 3
    assert 1 <= report["mean_return"] <= 500

    # A second train into the same folder must not overwrite the saved run.
    before = ckpt.read_bytes()
    again = invoke("train", *TINY, "--out", str(out))
    assert_usage_error(again, "already holds files")
    assert ckpt.read_bytes() == before


def test_eval_bad_checkpoints(tmp_path):
    assert_usage_error(invoke("eval", str(tmp_path / "nope.safetensors")), "no checkpoint file")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x13garbage" * 10)
    assert_usage_error(invoke("eval", str(junk)), "not a readable safetensors file")
    assert_usage_error(invoke("eval", str(junk), "--episodes", "0"), "--episodes")


def test_envs_lists_cartpole():
    result = invoke("envs")
    assert result.exit_code == 0 and "cartpole" in result.output


def test_envs_lists_an_envs_options_with_their_defaults():
    lake = invoke("envs", "gym:FrozenLake-v1")
    assert lake.exit_code == 0, lake.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in lake.output.splitlines()
            if line.count("│") == 3}
    # the registered keyword over the constructor's, make's time limit, and fkernel's own
    assert rows["map_name"] == "4x4" and rows["is_slippery"] == "true" and rows["max_episode_steps"] == "100"
    assert rows["workers"] == "0"
    morpho = invoke("envs", "morpho")
    assert morpho.exit_code == 0 and "dataset" in morpho.output and "shapes" in morpho.output
    assert_usage_error(invoke("envs", "gym:FrozenLake-v9"), "closest registered: FrozenLake-v1")
    assert_usage_error(invoke("envs", "nosuch"), "unknown env 'nosuch'")


def test_telemetry_jsonl_and_grad_table(tmp_path):
    out, tel = tmp_path / "run", tmp_path / "tel"
    result = CliRunner().invoke(cli, ["train", *TINY, "--out", str(out), "--telemetry-dir", str(tel),
                                      "--grad-table-every", "2", "--precision", "bf16"], terminal_width=150)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tel / "telemetry.jsonl").read_text().splitlines()]
    assert [r["update"] for r in records] == [1, 2]
    for r in records:
        assert {"loss", "approx_kl", "clip_frac", "loss_scale", "skipped", "skipped_total"} <= set(r)
        assert set(r["grads"]) == {"trunk", "heads.action", "value"}
        assert {"norm", "max_abs", "nan", "inf", "zero_frac", "update_ratio", "status"} == set(r["grads"]["trunk"])
        assert {"relevant", "decisions", "status"} <= set(r["grads"]["heads.action"])
    assert "gradients, update 2" in result.output and "bf16" in result.output
    assert "gradients, update 1" not in result.output
    again = invoke("train", *TINY, "--out", str(tmp_path / "run2"), "--telemetry-dir", str(tel))
    assert_usage_error(again, "already exists")


def saved_params(tmp_path, name, params, config):
    from kernel import checkpoint

    return str(checkpoint.save(tmp_path / f"{name}.safetensors", {"params": params}, {"config": config.to_dict()}))


def cartpole_params(config):
    import envs
    from kernel.build import policy_for

    return policy_for(config, envs.make(config.env, 1)).init(torch.Generator().manual_seed(0))


@pytest.mark.parametrize("command", ["eval", "grads"])
def test_eval_and_grads_check_params_against_the_policy_their_config_builds(tmp_path, command):
    from kernel.config import Config

    config = Config()
    good = cartpole_params(config)
    missing = {**good, "value": {"w": good["value"]["w"]}}
    wide = {**good, "value": {"w": torch.zeros(1, 65), "b": good["value"]["b"]}}
    half = {**good, "value": {"w": good["value"]["w"].half(), "b": good["value"]["b"]}}
    seedbed = Config.for_env("seedbed")
    cases = [("missing", missing, config, "missing params/value.b"),
             ("shape", wide, config, "shape of params/value.w is [1, 65], expected [1, 64]"),
             ("dtype", half, config, "dtype of params/value.w is torch.float16, expected torch.float32"),
             ("other-env", good, seedbed, "does not match the seedbed policy")]
    for name, params, cfg, needle in cases:
        path = saved_params(tmp_path, name, params, cfg)
        extra = ["--episodes", "2"] if command == "eval" else ["--precision", "fp32", "--num-envs", "2",
                                                                "--num-steps", "8"]
        assert_usage_error(invoke(command, path, *extra), needle)
    path = saved_params(tmp_path, "good", good, config)
    extra = ["--episodes", "2"] if command == "eval" else ["--precision", "fp32", "--num-envs", "2", "--num-steps", "8"]
    assert invoke(command, path, *extra).exit_code == 0


@pytest.mark.parametrize("command", ["eval", "grads", "inspect"])
def test_checkpoint_with_bad_metadata_is_a_one_line_usage_error(tmp_path, command):
    from safetensors.torch import save_file

    path = tmp_path / "list-meta.safetensors"
    save_file({"params/w": torch.zeros(2)}, str(path), metadata={"format": "fkernel-checkpoint",
                                                                 "format_version": "1", "fkernel": "[1, 2]"})
    assert_usage_error(invoke(command, str(path)), "metadata that is a JSON list")


def test_python_api_and_cli_write_the_same_run_folder(tmp_path):
    from kernel import Config, execute, prepare
    from kernel.checkpoint import flatten_sections, load

    cli_out, py_out = tmp_path / "cli", tmp_path / "py"
    result = invoke("train", *TINY, "--total-steps", "96", "--seed", "4", "--out", str(cli_out),
                    "--checkpoint-every", "1", "--keep", "2")
    assert result.exit_code == 0, result.output
    from kernel.runs import Options

    config = Config(num_envs=2, num_steps=16, total_steps=96, seed=4, compile=False)
    finished = execute(prepare(config, py_out, options=Options(checkpoint_every=1, keep=2)))
    listing = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert listing(cli_out) == listing(py_out)
    assert listing(py_out) == ["checkpoints", "checkpoints/ckpt-0000002.safetensors",
                               "checkpoints/ckpt-0000003.safetensors", "config.json", "params.safetensors",
                               "summary.json", "telemetry.jsonl"]
    assert json.loads((cli_out / "config.json").read_text()) == json.loads((py_out / "config.json").read_text())
    assert finished.params_path == py_out / "params.safetensors"
    a, b = flatten_sections(load(cli_out / "params.safetensors")[0]), flatten_sections(load(finished.params_path)[0])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [(root / "telemetry.jsonl").read_text().splitlines() for root in (cli_out, py_out)]
    assert len(lines[0]) == len(lines[1]) == 3
    assert [json.loads(x)["loss"] for x in lines[0]] == [json.loads(x)["loss"] for x in lines[1]]


def test_seeds_and_sweep_train_a_group_with_a_folder_per_run(tmp_path):
    out = tmp_path / "grid"
    result = invoke("train", *TINY, "--total-steps", "96", "--seeds", "0-1", "--sweep", "lr=1e-3,3e-3",
                    "--sweep", "ent_coef=0", "--out", str(out), "--checkpoint-every", "0")
    assert result.exit_code == 0, result.output
    assert "runs=4" in result.output and "settings by final mean return" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["seed"], r["lr"], r["ent_coef"]) for r in summary["runs"]] == \
        [(0, 1e-3, 0.0), (1, 1e-3, 0.0), (0, 3e-3, 0.0), (1, 3e-3, 0.0)]
    assert all({"mean_return", "first_solved", "skipped_steps"} <= set(r) for r in summary["runs"])
    assert [s["seeds"] for s in summary["settings"]] == [2, 2]
    for r in range(4):
        run_config = json.loads((out / f"run-{r}" / "config.json").read_text())
        assert run_config["seed"] == summary["runs"][r]["seed"] and run_config["lr"] == summary["runs"][r]["lr"]
        assert len((out / f"run-{r}" / "telemetry.jsonl").read_text().splitlines()) == 3
    one = invoke("eval", str(out / "run-2" / "params.safetensors"), "--episodes", "2", "--json")
    assert one.exit_code == 0, one.output
    whole = invoke("eval", str(out / "params.safetensors"))
    assert_usage_error(whole, "group of 4 runs", "run-<i>/params.safetensors")


@pytest.mark.parametrize("args, needles", [
    (["--sweep", "hidden=8,16"], ["cannot sweep 'hidden'", "lr"]),
    (["--sweep", "lr"], ["KEY=V1,V2"]),
    (["--seeds", "3-a"], ["--seeds", "0-15"]),
    (["--seeds", "1,1"], ["distinct"]),
    (["--sweep", "gamma=2"], ["gamma must be in"]),
    (["--sweep", "lr=1e-3,1e-3"], ["sweep of 'lr' repeats 0.001"]),
    (["--sweep", "precision=fp32,bf16"], ["cannot sweep 'precision'", "constant of the compiled graph"]),
    (["--sweep", "num_envs=4,8"], ["cannot sweep 'num_envs'", "tensor shapes"]),
    (["--sweep", "vf_coef=0.5,nan"], ["run 1", "vf_coef must be a finite number"]),
    (["--sweep", "ent_coef=0,-0.01"], ["run 1", "ent_coef must be >= 0"]),
    (["--sweep", "max_grad_norm=0.5,inf"], ["run 1", "max_grad_norm must be a finite number"]),
])
def test_bad_seeds_and_sweeps_are_usage_errors(args, needles, tmp_path):
    result = invoke("train", *TINY, *args, "--out", str(tmp_path / "run"))
    assert_usage_error(result, *needles)
    assert not (tmp_path / "run").exists()


MORPHO = ["--env", "morpho", "--num-envs", "4", "--num-steps", "3", "--total-steps", "24", "--env-option",
          "train_size=64", "--env-option", "val_size=16"]


@pytest.mark.parametrize("args, needles", [
    (["--env-option", "dataset=cifar10"], ["cifar10 needs a data folder"]),
    (["--env-option", "dataset=cifar10", "--env-option", "data_dir=."],
     ["no CIFAR-10 in", "cifar-10-batches-py/", "data_batch_1"]),
    (["--env-option", "dataset=mnist"], ["mnist", "shapes", "cifar10"]),
    (["--env-option", "train_size=0"], ["train_size", "positive"]),
    (["--env-option", "val_size=0"], ["val_size", "positive"]),
    (["--env-option", "colour=1"], ["env morpho takes only dataset", "got colour", "fkernel envs morpho"]),
    (["--env-option", "train_size"], ["'train_size' is not KEY=VALUE"]),
    (["--env-option", "slots=2", "--env-option", "slots=3"], ["slots is given twice"]),
])
def test_morpho_rejects_bad_data_requests(args, needles, tmp_path):
    result = invoke("train", "--env", "morpho", *args, "--out", str(tmp_path / "run"))
    assert_usage_error(result, *needles)
    assert not (tmp_path / "run").exists()


def test_data_options_belong_to_morpho(tmp_path):
    assert_usage_error(invoke("train", "--env-option", "dataset=shapes", "--out", str(tmp_path / "run")),
                       "env cartpole takes no options", "dataset")


def test_morpho_trains_with_a_bf16_trunk_and_shows_every_head(tmp_path):
    result = invoke("train", *MORPHO, "--precision", "bf16", "--grad-table-every", "1", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    for head in ("op", "slot", "blueprint", "tempo"):
        rows = [line for line in result.output.splitlines() if f"heads.{head} " in line]
        assert rows and all("finite" in row or "not relevant" in row for row in rows), (head, rows)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["env_options"] == {"train_size": 64, "val_size": 16} and config["precision"] == "bf16"
    assert (tmp_path / "run" / "params.safetensors").exists()


def test_morpho_resumes_bit_for_bit(tmp_path):
    import shutil

    from kernel import checkpoint

    straight = tmp_path / "straight"
    args = [*MORPHO, "--total-steps", "36", "--threads", "1", "--checkpoint-every", "1"]
    assert invoke("train", *args, "--out", str(straight)).exit_code == 0
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    (resumed / "params.safetensors").unlink()
    for later in sorted((resumed / "checkpoints").glob("ckpt-*.safetensors"))[1:]:
        later.unlink()  # back to the state after the first update
    result = invoke("train", "--out", str(resumed), "--resume", "latest", "--threads", "1")
    assert result.exit_code == 0 and "resuming at update 1" in result.output, result.output
    a, b = (checkpoint.flatten_sections(checkpoint.load(p / "params.safetensors")[0]) for p in (straight, resumed))
    assert a.keys() == b.keys() and "carry/env.host.stem.w" in a  # the hosts themselves resume too
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_morpho_rejects_a_malformed_cifar_folder(tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"not a pickle")
    result = invoke("train", *MORPHO, "--env-option", "dataset=cifar10", "--env-option",
                    f"data_dir={tmp_path / 'data'}", "--out", str(tmp_path / "run"))
    assert_usage_error(result, "malformed CIFAR-10 files")
    assert not (tmp_path / "run").exists()


def test_compile_auto_starts_eagerly_and_flags_force_it(tmp_path):
    result = invoke("train", "--num-envs", "2", "--num-steps", "16", "--total-steps", "64",
                    "--out", str(tmp_path / "a"))
    assert result.exit_code == 0, result.output
    auto_lines = [line for line in result.output.splitlines() if line.startswith("compile auto:")]
    assert auto_lines == ["compile auto: training starts eagerly while a helper process compiles, and switches to "
                          "the compiled code once it is ready (checked against the eager update there)"], result.output
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["compile"] is True and saved["compile_from_update"] is None
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())  # 2 updates: over before the helper
    assert summary["switch_update"] is None and summary["tiers"]["failure"] is None
    forced = invoke("train", *TINY, "--out", str(tmp_path / "b"))
    assert forced.exit_code == 0 and "compile auto" not in forced.output
    assert_usage_error(invoke("train", "--no-compile", "--compile", "on"), "--no-compile contradicts --compile on")
    assert_usage_error(invoke("train", "--compile", "sometimes"), "sometimes")
    assert_usage_error(invoke("train", "--no-compile", "--compile-from-update", "2"),
                       "--compile-from-update switches to compiled code")
    assert_usage_error(invoke("train", "--compile-from-update", "-1"), "-1")


def test_preset_applies_and_flags_override_it(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--preset", "cartpole-gpu", "--device", "cpu", "--num-envs", "4", "--total-steps", "128",
                    "--no-compile", "--out", str(out))
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert (saved["num_envs"], saved["num_steps"], saved["lr"], saved["device"]) == (4, 16, 1e-3, "cpu")
    assert_usage_error(invoke("train", "--preset", "nope"), "nope")


def test_data_parallel_split_is_checked_on_the_preset_values(tmp_path):
    # cartpole-gpu's 2048 envs split over 8 ranks; over 3 they do not, and that is what is refused.
    assert_usage_error(invoke("train", "--preset", "cartpole-gpu", "--device", "cpu", "--nproc", "3",
                              "--out", str(tmp_path / "a")),
                       "num_envs=2048 cannot be split evenly over 3 processes")
    assert not (tmp_path / "a").exists()


def test_fuse_where_it_cannot_be_is_a_usage_error(tmp_path):
    assert_usage_error(invoke("train", *TINY, "--fuse", "--seeds", "0,1", "--out", str(tmp_path / "a")),
                       "fuse='on' is not possible here: a group of runs trains unfused")
    assert_usage_error(invoke("train", "--env", "morpho", "--fuse", "--out", str(tmp_path / "b")),
                       "fuse='on' is not possible here", "morpho steps in Python")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_gymnasium_env_trains_and_evaluates(tmp_path, workers):
    out = tmp_path / "run"
    result = invoke("train", "--env", "gym:CartPole-v1", "--num-envs", "2", "--num-steps", "16", "--total-steps", "96",
                    "--env-workers", str(workers), "--compile", "on", "--out", str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env_steps"] == 96 and summary["episodes_in_window"] > 0
    assert summary["compiled_in_first_update"] and summary["compile_s"] == 0  # no warm-up could run it
    evaluated = invoke("eval", str(out / "params.safetensors"), "--episodes", "2", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["episodes"] == 2


def test_a_gymnasium_env_takes_makes_keywords_and_eval_uses_them(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--env", "gym:Pendulum-v1", "--env-option", "max_episode_steps=8", "--env-option",
                    "g=9.81", "--num-envs", "2", "--num-steps", "16", "--total-steps", "64", "--no-compile",
                    "--log-std-init", "-0.5", "--out", str(out))
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["env_options"] == {"max_episode_steps": 8, "g": 9.81} and config["log_std_init"] == -0.5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes_in_window"] == 64 // 8  # every episode cut at 8 steps
    evaluated = invoke("eval", str(out / "params.safetensors"), "--episodes", "2", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    # Pendulum's reward is at least -16.3 a step: only 8-step episodes stay above this
    assert json.loads(evaluated.output)["mean_return"] >= -16.3 * 8


@pytest.mark.parametrize("args, needles", [
    (["--env", "gym:Pendulum-v1", "--env-option", "gravity=3"], ["takes no option gravity", "g, max_episode_steps"]),
    (["--env", "gym:FrozenLake-v1", "--env-option", "map_name=9x9"], ["cannot make 'FrozenLake-v1'", "9x9"]),
    (["--env", "gym:CartPole-v1", "--env-option", "workers=1", "--env-workers", "2"],
     ["--env-workers 2 contradicts workers=1"]),
    (["--log-std-init", "0.5"], ["log_std_init applies to Gaussian action heads", "cartpole"]),
    (["--env", "gym:CartPole-v1", "--log-std-init", "0.5"], ["log_std_init applies to Gaussian action heads"]),
    (["--env", "gym:CartPole-v9"], ["gymnasium cannot make 'CartPole-v9'", "closest registered: CartPole-v1"]),
    (["--env", "gym:Blackjack-v1"], ["observation space Tuple(", "is not supported"]),
    (["--env", "gym:FrozenLake-v1", "--norm-obs"], ["norm_obs needs real-valued observations"]),
])
def test_bad_env_options_are_usage_errors_that_write_nothing(args, needles, tmp_path):
    assert_usage_error(invoke("train", *args, "--out", str(tmp_path / "run")), *needles)
    assert not (tmp_path / "run").exists()


def test_a_gym_env_without_the_extra_is_a_usage_error_naming_the_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gymnasium", None)  # what an environment without the extra sees
    assert_usage_error(invoke("train", "--env", "gym:Pendulum-v1", "--out", str(tmp_path / "run")),
                       'pip install -e ".[gym]"')
    assert not (tmp_path / "run").exists()


def test_a_gymnasium_env_trains_as_a_group_of_seeds(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--env", "gym:CartPole-v1", "--seeds", "0,1", "--num-envs", "2", "--num-steps", "16",
                    "--total-steps", "96", "--no-compile", "--out", str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [row["seed"] for row in summary["runs"]] == [0, 1] and summary["env_steps"] == 192
    assert "checkpoints hold everything but gymnasium's own env state" in result.output


def test_a_gymnasium_run_resumes_with_fresh_episodes_and_says_so(tmp_path):
    out = tmp_path / "run"
    first = invoke("train", "--env", "gym:Pendulum-v1", "--num-envs", "2", "--num-steps", "16", "--total-steps", "64",
                   "--norm-obs", "--no-compile", "--checkpoint-every", "1", "--out", str(out))
    assert first.exit_code == 0, first.output
    resumed = invoke("train", "--resume", "latest", "--out", str(out), "--total-steps", "128")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed with fresh episodes" in resumed.output
    assert json.loads((out / "summary.json").read_text())["env_steps"] == 128
