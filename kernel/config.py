"""The run configuration: one plain, immutable dataclass (PureJaxRL's ``make_train(config)`` style).

Defaults are PureJaxRL's CartPole configuration so results compare one to one with that reference.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from kernel.precision import Precision, parse


@dataclass(frozen=True)
class Config:
    env: str = "cartpole"
    env_options: dict = field(default_factory=dict)  # keyword options of the env (e.g. morpho's dataset)
    num_envs: int = 4
    num_steps: int = 128
    total_steps: int = 500_000
    update_epochs: int = 4
    num_minibatches: int = 4
    lr: float = 2.5e-4
    anneal_lr: bool = True
    adam_eps: float = 1e-5
    max_grad_norm: float = 0.5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.01
    ent_coef_heads: dict = field(default_factory=dict)  # per-head additions to ent_coef
    norm_entropy: bool = False  # divide each head's entropy by log(number of valid actions)
    head_average: str = "decisions"  # per-head PPO terms average over "decisions" or all "relevant" steps
    vf_coef: float = 0.5
    norm_adv: bool = True
    norm_obs: bool = False  # observations standardized by running statistics (kept in the state), clipped at 10
    norm_reward: bool = False  # rewards divided by the running std of a discounted return, clipped at 10
    log_std_init: float | None = None  # Gaussian heads' initial log std (None: 0, std 1); refused without one
    hidden: tuple = (64, 64)
    activation: str = "tanh"
    policy: str = "mlp"  # "mlp" or "lstm"
    lstm_size: int = 64
    precision: Precision = Precision()  # given as "fp32", "bf16", ...: parsed once, by validated()
    seed: int = 0
    device: str = "cpu"
    compile: bool = True
    fuse: str = "auto"  # the whole iteration as one compiled call: "auto" (where it pays), "on" or "off"
    # With compile: the updates before this one run eagerly; this one runs eagerly too and checks the
    # compiled update on its rollout; the rest run compiled if the two agreed. A run's record: the
    # same seed and switch update replay it bit for bit. None: switch once the compiled functions
    # are ready, built beside the eager updates (kernel.tiers); the run records the update it took.
    compile_from_update: int | None = 0

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_steps // self.batch_size

    def replace(self, **changes) -> Config:
        return validated(dataclasses.replace(self, **changes))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["hidden"] = list(self.hidden)
        d["ent_coef_heads"] = dict(self.ent_coef_heads)
        d["env_options"] = dict(self.env_options)
        d["precision"] = str(self.precision)
        return d

    @classmethod
    def for_env(cls, env: str, **changes) -> Config:
        """The env's recommended defaults (ENV_DEFAULTS), then ``changes``."""
        return validated(dataclasses.replace(cls(), **{"env": env, **ENV_DEFAULTS.get(env, {}), **changes}))


FIELDS = {f.name: f for f in dataclasses.fields(Config)}

# Per-env defaults applied before a config file and flags (CartPole uses the class defaults).
ENV_DEFAULTS = {
    # morpho's steps are epochs of real host training: a few hundred make a practical CPU run, and
    # compiling the policy update does not pay against them (eager is the default).
    "morpho": dict(num_envs=16, num_steps=25, total_steps=16 * 25 * 24, update_epochs=4, num_minibatches=4,
                   lr=5e-4, ent_coef=0.03, norm_entropy=True, gamma=0.99, hidden=(128,), policy="lstm",
                   lstm_size=128, activation="relu", compile=False),
    "seedbed": dict(num_envs=32, num_steps=25, total_steps=400_000, update_epochs=4, num_minibatches=4,
                    lr=5e-4, ent_coef=0.03, norm_entropy=True, gamma=0.99, hidden=(128,), policy="lstm",
                    lstm_size=128, activation="relu"),
}
# Named sets of config values (``fkernel train --preset NAME``), applied like flags.
PRESETS = {
    # Thousands of envs with short segments: each update sees a large, fresh batch, so a larger
    # learning rate is stable and CartPole solves in few updates (tests/kernel/test_presets.py trains
    # it with fewer envs on the CPU).
    "cartpole-gpu": dict(env="cartpole", num_envs=2048, num_steps=16, total_steps=8_000_000, update_epochs=4,
                         num_minibatches=4, lr=1e-3, device="cuda"),
    # Continuous control on the CPU: a short horizon (gamma 0.9), many epochs over small minibatches
    # and scaled rewards; no entropy bonus (the Gaussian's own std explores).
    "pendulum": dict(env="pendulum", num_envs=16, num_steps=128, total_steps=500_000, update_epochs=10,
                     num_minibatches=16, lr=1e-3, gamma=0.9, gae_lambda=0.95, ent_coef=0.0, norm_reward=True),
    # CleanRL's continuous PPO (ppo_continuous_action.py) for gymnasium's MuJoCo tasks: one env,
    # long segments, many small minibatches, normalized observations and rewards, no entropy bonus.
    "mujoco": dict(env="gym:HalfCheetah-v5", num_envs=1, num_steps=2048, total_steps=1_000_000, update_epochs=10,
                   num_minibatches=32, lr=3e-4, anneal_lr=True, gamma=0.99, gae_lambda=0.95, clip_coef=0.2,
                   clip_vloss=True, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, norm_adv=True, norm_obs=True,
                   norm_reward=True, hidden=(64, 64), activation="tanh", policy="mlp"),
}
POSITIVE_INTS = ("num_envs", "num_steps", "total_steps", "update_epochs", "num_minibatches")
FLOATS = ("lr", "adam_eps", "max_grad_norm", "gamma", "gae_lambda", "clip_coef", "ent_coef", "vf_coef")


def validated(config: Config) -> Config:
    """Return ``config`` (its precision parsed into a :class:`Precision`) or raise ``ValueError``
    naming the first problem found."""
    for name in POSITIVE_INTS:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if config.batch_size % config.num_minibatches:
        raise ValueError(
            f"num_minibatches={config.num_minibatches} does not divide the batch "
            f"num_envs*num_steps={config.batch_size}"
        )
    if config.total_steps < config.batch_size:
        raise ValueError(
            f"total_steps={config.total_steps} is smaller than one batch (num_envs*num_steps={config.batch_size})"
        )
    for name in FLOATS:
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    for name in ("lr", "adam_eps", "max_grad_norm", "clip_coef"):
        if not getattr(config, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(config, name)!r}")
    for name in ("ent_coef", "vf_coef"):
        if not getattr(config, name) >= 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(config, name)!r}")
    for name in ("gamma", "gae_lambda"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(config, name)!r}")
    if config.log_std_init is not None and (
            isinstance(config.log_std_init, bool) or not isinstance(config.log_std_init, (int, float))
            or not math.isfinite(config.log_std_init)):
        raise ValueError(f"log_std_init must be a finite number, got {config.log_std_init!r}")
    if not config.hidden or any(not isinstance(h, int) or h < 1 for h in config.hidden):
        raise ValueError(f"hidden must be a non-empty list of positive integers, got {list(config.hidden)!r}")
    if config.policy not in ("mlp", "lstm"):
        raise ValueError(f"policy must be 'mlp' or 'lstm', got {config.policy!r}")
    if config.policy == "lstm" and config.num_envs % config.num_minibatches:
        raise ValueError(f"with policy=lstm, num_minibatches={config.num_minibatches} must divide "
                         f"num_envs={config.num_envs} (minibatches are whole env columns)")
    if not isinstance(config.lstm_size, int) or config.lstm_size < 1:
        raise ValueError(f"lstm_size must be a positive integer, got {config.lstm_size!r}")
    if not isinstance(config.env_options, dict) or not all(isinstance(k, str) for k in config.env_options):
        raise ValueError(f"env_options must map option names to values, got {config.env_options!r}")
    if not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for k, v in config.ent_coef_heads.items()):
        raise ValueError(f"ent_coef_heads must map head names to finite numbers, got {config.ent_coef_heads!r}")
    for head, extra in config.ent_coef_heads.items():
        if not config.ent_coef + extra >= 0:
            raise ValueError(f"ent_coef_heads: head {head!r}'s entropy coefficient ent_coef + {extra!r} "
                             f"= {config.ent_coef + extra!r} must be >= 0")
    if config.head_average not in ("decisions", "relevant"):
        raise ValueError(f"head_average must be 'decisions' or 'relevant', got {config.head_average!r}")
    value = config.compile_from_update
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"compile_from_update must be a non-negative integer or null, got {value!r}")
    if config.fuse not in ("auto", "on", "off"):
        raise ValueError(f"fuse must be 'auto', 'on' or 'off', got {config.fuse!r}")
    if config.activation not in ("tanh", "relu"):
        raise ValueError(f"activation must be 'tanh' or 'relu', got {config.activation!r}")
    if not isinstance(config.precision, Precision):
        try:
            config = dataclasses.replace(config, precision=parse(config.precision))
        except (ValueError, AttributeError) as e:
            raise ValueError(f"precision: {e}") from None
    return config


def from_dict(values: dict, base: Config | None = None) -> Config:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
    values = dict(values)
    if "hidden" in values:
        if not isinstance(values["hidden"], (list, tuple)):
            raise ValueError(f"hidden must be a list of positive integers, got {values['hidden']!r}")
        values["hidden"] = tuple(values["hidden"])
    for name, value in values.items():
        if name == "precision":
            if not isinstance(value, (str, Precision)):
                raise ValueError(f"config key 'precision' must be a string such as 'bf16', got {value!r}")
            continue  # parsed by validated()
        if name == "log_std_init":  # optional: None or a number (checked by validated())
            values[name] = float(value) if isinstance(value, int) and not isinstance(value, bool) else value
            continue
        if name == "compile_from_update" and value is None:  # null: switch when compiled (kernel.tiers)
            continue
        expected = type(getattr(base or Config(), name))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[name] = float(value)
        elif expected is not tuple and not isinstance(values[name], expected) or \
                (expected is int and isinstance(value, bool)):
            raise ValueError(f"config key {name!r} must be {expected.__name__}, got {value!r}")
    return validated(dataclasses.replace(base or Config(), **values))


def read_json_object(path: str | Path) -> dict:
    """The JSON object in ``path``, or ``ValueError`` saying what is wrong with the file."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {path} is not valid JSON: {e.msg} (line {e.lineno})") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a JSON object, got {type(values).__name__}")
    return values
