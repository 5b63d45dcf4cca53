"""Any gymnasium environment, through gymnasium's vector API: ``envs.make("gym:Pendulum-v1", n)``.

The sub-environments step on the host (synchronously, or in ``workers`` processes), so the env is
``compilable = False``: the rollout steps it from Python and only the policy step compiles. The
vector env resets finished sub-environments within the step that ends them (gymnasium's
``SAME_STEP`` autoreset) and hands back their final observation, so a truncated episode bootstraps
from its true last state. Box, Discrete and MultiDiscrete action spaces map to one Gaussian head,
one categorical head and one categorical head per dimension; Box, Discrete (one-hot) and
MultiBinary observations are flattened to float vectors.

Unlike the torch-native envs, its state lives in the gymnasium objects, not in the ``state`` it
returns: the sub-environments are seeded at ``reset`` from the caller's noise (so ``--seed``
reproduces a run), but a checkpoint cannot hold them, and a resumed run starts fresh episodes.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch

from envs.base import ActionSpec, EnvOptionError, Head, Step

PREFIX = "gym:"
SEED_RANGE = 2**31 - 1


def require_gymnasium():
    try:
        import gymnasium
    except ImportError:
        raise EnvOptionError('gym: envs need gymnasium: pip install -e ".[gym]"') from None
    return gymnasium


# make's own keywords worth setting from the command line (the rest of make's are rendering and checks)
MAKE_KEYWORDS = ("max_episode_steps",)
# constructor keywords that mean nothing to training
NOT_OPTIONS = ("self", "render_mode")
REQUIRED = "(required)"


def registered(env_id: str):
    """gymnasium's spec of ``env_id``; an unknown id is an :class:`EnvOptionError` naming the
    closest registered ids."""
    gym = require_gymnasium()
    try:
        return gym.spec(env_id)
    except gym.error.Error as e:
        raise EnvOptionError(f"gymnasium cannot make {env_id!r}: {str(e).splitlines()[0]}{closest(env_id)}") from None


def closest(env_id: str) -> str:
    import difflib

    close = difflib.get_close_matches(env_id, list(require_gymnasium().registry), n=3, cutoff=0.6)
    return f"; closest registered: {', '.join(close)}" if close else ""


def make_options(env_id: str) -> tuple[dict, bool]:
    """The keyword options ``env_id`` takes (``make``'s ``max_episode_steps`` and the env
    constructor's keywords) with their defaults, the registered ones first; and whether the
    constructor takes any other keyword too (``**kwargs``)."""
    from gymnasium.envs.registration import load_env_creator

    spec = registered(env_id)
    options: dict = {k: getattr(spec, k) for k in MAKE_KEYWORDS}
    try:  # importing the env's module can fail (a missing dependency such as Box2D): one line
        creator = spec.entry_point if callable(spec.entry_point) else load_env_creator(spec.entry_point)
    except Exception as e:
        raise EnvOptionError(f"gymnasium cannot make {env_id!r}: {(str(e).splitlines() or [''])[0]}") from None
    params = inspect.signature(creator).parameters.values()
    for p in params:
        if p.name not in NOT_OPTIONS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            options[p.name] = REQUIRED if p.default is p.empty else p.default
    options.update(spec.kwargs)
    return options, any(p.kind == p.VAR_KEYWORD for p in params)


def action_spec(space) -> ActionSpec:
    """The heads that act in ``space`` (one env's action space)."""
    spaces = require_gymnasium().spaces
    if isinstance(space, spaces.Box):
        size = int(np.prod(space.shape))
        low, high = (tuple(float(v) for v in b.reshape(-1)) for b in (space.low, space.high))
        return ActionSpec((Head("action", size, "gaussian", low, high),))
    if isinstance(space, spaces.Discrete):
        return ActionSpec((Head("action", int(space.n)),))
    if isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
        return ActionSpec(tuple(Head(f"action{i}", int(n)) for i, n in enumerate(space.nvec)))
    raise EnvOptionError(f"action space {space} is not supported: use Box, Discrete or MultiDiscrete")


def obs_size(space) -> int:
    spaces = require_gymnasium().spaces
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    raise EnvOptionError(f"observation space {space} is not supported: use Box, Discrete or MultiBinary")


class GymEnv:
    compilable = False
    host_state = True  # the episodes live in the gymnasium objects, not in the returned state
    solved_return = None
    OPTIONS = ("workers",)  # fkernel's own; every other option is a keyword of gymnasium's make

    def __init__(self, env_id: str, num_envs: int, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, workers: int = 0, **make_kwargs):
        gym = require_gymnasium()
        from gymnasium.vector import AutoresetMode

        self.name, self.num_envs, self.device, self.dtype = PREFIX + env_id, num_envs, torch.device(device), dtype
        self.description = f"gymnasium {env_id} through its vector API"
        mode = "async" if workers else "sync"
        registered(env_id)
        try:
            self.vector = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode,
                                       vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **make_kwargs)
        except Exception as e:  # the env's own constructor failing on the keywords given (any type): one line
            given = f" with {make_kwargs}" if make_kwargs else ""
            why = (str(e).splitlines() or [""])[0]
            raise EnvOptionError(f"gymnasium cannot make {env_id!r}{given}: {type(e).__name__}: {why}") from None
        # made here in SAME_STEP mode and in this process: :meth:`stepped` steps its envs itself
        self.envs = self.vector.envs if isinstance(self.vector, gym.vector.SyncVectorEnv) else None
        self._spaces()

    def _spaces(self) -> None:
        self.obs_space, self.act_space = self.vector.single_observation_space, self.vector.single_action_space
        self.action_spec = action_spec(self.act_space)
        self.obs_dim = obs_size(self.obs_space)
        # what norm_obs may standardize: real-valued observations, not indices or bits
        spaces = require_gymnasium().spaces
        self.float_obs = isinstance(self.obs_space, spaces.Box) and np.issubdtype(self.obs_space.dtype, np.floating)
        self.one_hot = isinstance(self.obs_space, spaces.Discrete)
        self.np_dtype = torch.empty((), dtype=self.dtype).numpy().dtype
        self.box, self.discrete = (isinstance(self.act_space, c) for c in (spaces.Box, spaces.Discrete))

    @classmethod
    def wrap(cls, vector, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> GymEnv:
        """A gymnasium vector env the caller made (its autoreset mode must be ``SAME_STEP``)."""
        from gymnasium.vector import AutoresetMode

        if vector.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
            raise EnvOptionError("a gymnasium vector env needs vector_kwargs={'autoreset_mode': "
                                 "AutoresetMode.SAME_STEP} so that truncated episodes bootstrap from their final "
                                 "observation")
        env = cls.__new__(cls)
        spec = getattr(vector, "spec", None)
        env.name = PREFIX + (spec.id if spec is not None else type(vector).__name__)
        env.num_envs, env.device, env.dtype, env.vector = vector.num_envs, torch.device(device), dtype, vector
        env.envs = None  # stepped through its own API (it may be wrapped)
        env.description = f"a gymnasium vector env ({env.name})"
        env._spaces()
        return env

    @staticmethod
    def check_options(env_id: str, workers: int = 0, **make_kwargs) -> None:
        """Raise :class:`EnvOptionError` on a bad ``workers`` or a keyword ``env_id`` does not take
        (values are checked by gymnasium when the env is made)."""
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise EnvOptionError(f"workers must be a non-negative integer, got {workers!r}")
        takes, any_keyword = make_options(env_id)
        unknown = sorted(set(make_kwargs) - set(takes))
        if unknown and not any_keyword:
            raise EnvOptionError(f"gym:{env_id} takes no option {', '.join(unknown)}; it takes "
                                 f"{', '.join(sorted({*takes, 'workers'}))} (see `fkernel envs gym:{env_id}`)")

    def noise_shape(self) -> tuple:
        """One uniform per sub-environment: its seed at ``reset`` (steps need none)."""
        return (self.num_envs, 1)

    def observe(self, obs) -> torch.Tensor:
        """Observations as a float tensor of ``[rows, obs_dim]``, always a copy (the vector env may
        reuse its buffers)."""
        return self.tensor(self.host_obs(obs))

    def host_obs(self, obs) -> np.ndarray:
        """Observations as a float array of ``[rows, obs_dim]``, a copy of the caller's own:
        ``np.array`` copies while it converts, so no second copy is made."""
        if self.one_hot:
            obs = np.eye(self.obs_space.n, dtype=self.np_dtype)[np.asarray(obs) - self.obs_space.start]
        obs = np.array(obs, dtype=self.np_dtype)
        return obs.reshape(len(obs), -1)

    def tensor(self, x: np.ndarray) -> torch.Tensor:
        """``x``, an array of the caller's own, on the env's device (shared with it on the CPU)."""
        x = torch.from_numpy(x)
        return x if self.device.type == "cpu" else x.to(self.device)

    def reset(self, noise: torch.Tensor):
        seeds = (noise[:, 0].double() * SEED_RANGE).long().tolist()
        obs, _ = self.vector.reset(seed=seeds)
        return torch.zeros(self.num_envs, dtype=torch.int64, device=self.device), self.observe(obs)

    def to_env(self, action: dict):
        if self.box:
            a = action["action"].detach().cpu().numpy()
            return a.reshape(self.num_envs, *self.act_space.shape).astype(self.act_space.dtype, copy=False)
        if self.discrete:
            return action["action"].cpu().numpy() + int(self.act_space.start)
        return np.stack([action[h.name].cpu().numpy() for h in self.action_spec.heads], axis=-1)

    def step(self, state: torch.Tensor, action, noise: torch.Tensor) -> Step:
        if not isinstance(action, dict):
            action = {self.action_spec.heads[0].name: action}
        obs, reward, terminated, truncated, finals = self.stepped(self.to_env(action))
        # Assembled in numpy and converted once per field: on a one-env MuJoCo task this host work
        # runs every env step, and a torch op costs more than its numpy counterpart at these sizes.
        obs = self.host_obs(obs)
        final = obs.copy()  # an array of its own either way, so compiled consumers see no aliasing
        if finals:  # the observation each finished sub-environment ended on, before its reset
            final[list(finals)] = self.host_obs(np.stack(list(finals.values())))
        # the step count within the episode, as the torch-native envs return it (host-side: the
        # gymnasium objects hold the episode, this is only what the kernel is told)
        t = (state.numpy(force=True) + 1) * ~(terminated | truncated)
        return Step(*map(self.tensor, (t, obs, reward, terminated, truncated, final)))

    def stepped(self, actions) -> tuple:
        """``(obs, reward, terminated, truncated, final observations by sub-environment)`` after
        one step, the arrays the caller's own. In-process sub-environments are stepped here in
        turn, each reset within the step that ends it: what gymnasium's ``SyncVectorEnv`` does in
        ``SAME_STEP`` mode, without assembling its per-step info dicts (which the kernel never
        reads). Worker processes and the caller's own vector envs step through the vector API."""
        if self.envs is None:
            obs, reward, terminated, truncated, info = self.vector.step(actions)
            ended = np.flatnonzero(np.logical_or(terminated, truncated))
            return (obs, np.array(reward, dtype=self.np_dtype), np.array(terminated, dtype=bool),
                    np.array(truncated, dtype=bool), {int(i): info["final_obs"][i] for i in ended})
        obs, finals = [], {}
        reward = np.empty(self.num_envs, dtype=self.np_dtype)
        terminated, truncated = np.empty(self.num_envs, dtype=bool), np.empty(self.num_envs, dtype=bool)
        for i, env in enumerate(self.envs):
            o, reward[i], terminated[i], truncated[i], _ = env.step(actions[i])
            if terminated[i] or truncated[i]:
                finals[i] = o
                o, _ = env.reset()
            obs.append(o)
        return obs, reward, terminated, truncated, finals

    def close(self) -> None:
        self.vector.close()
