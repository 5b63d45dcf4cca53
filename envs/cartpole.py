"""CartPole-v1 as batched torch ops, matching gymnasium's reference dynamics step for step.

Euler integration, reward 1 on every step (the terminating one included), termination when
|x| > 2.4 or |theta| > 12 degrees, truncation after 500 steps, reset state uniform in
[-0.05, 0.05)^4 drawn from the explicit noise the caller passes. Finished sub-environments reset
automatically inside ``step``; run in float64 for bit-level parity checks, float32 for training.
"""
from __future__ import annotations

import math

import torch

from envs.base import ActionSpec, Head, Step
from kernel.eager import constants

GRAVITY = 9.8
MASS_CART = 1.0
MASS_POLE = 0.1
TOTAL_MASS = MASS_CART + MASS_POLE
LENGTH = 0.5  # half the pole's length
POLEMASS_LENGTH = MASS_POLE * LENGTH
FORCE_MAG = 10.0
TAU = 0.02
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4
RESET_BOUND = 0.05
# The numbers the maths reads, by name: 0-d tensors eagerly (kernel.eager.constants).
PHYSICS = {"force": FORCE_MAG, "neg_force": -FORCE_MAG, "gravity": GRAVITY, "total_mass": TOTAL_MASS,
           "length": LENGTH, "polemass_length": POLEMASS_LENGTH, "mass_pole": MASS_POLE, "four_thirds": 4.0 / 3.0,
           "tau": TAU, "x_threshold": X_THRESHOLD, "theta_threshold": THETA_THRESHOLD, "two": 2.0, "one": 1.0,
           "reset_bound": RESET_BOUND}


class CartPole:
    name = "cartpole"
    description = "CartPole-v1 (gymnasium dynamics), 2 actions, 500-step time limit"
    action_spec = ActionSpec((Head("action", 2),))
    obs_dim = 4
    solved_return = 475.0  # mean over the last 100 episodes, the usual CartPole-v1 bar

    def __init__(self, num_envs: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 max_steps: int = 500):
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_steps = max_steps
        self._counts = {"one": 1, "zero": 0, "max_steps": max_steps}  # the step counter's numbers

    def noise_shape(self) -> tuple:
        """Uniforms one ``reset`` or ``step`` consumes (step uses them for auto-reset)."""
        return (self.num_envs, 4)

    def _initial_physics(self, noise: torch.Tensor) -> torch.Tensor:
        noise = noise.to(self.dtype)
        k = constants(PHYSICS, noise)
        return (noise * k["two"] - k["one"]) * k["reset_bound"]

    def reset(self, noise: torch.Tensor):
        physics = self._initial_physics(noise)
        steps = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        return {"physics": physics, "t": steps}, physics

    def step(self, state: dict, action, noise: torch.Tensor) -> Step:
        if isinstance(action, dict):
            action = action["action"]
        physics = dynamics(state["physics"], action)
        k = constants(PHYSICS, physics)
        # |x| > bound is x < -bound or x > bound (negation is exact): fewer ops per eager step.
        terminated = (physics[:, 0].abs() > k["x_threshold"]) | (physics[:, 2].abs() > k["theta_threshold"])
        n = constants(self._counts, state["t"])
        t = state["t"] + n["one"]
        truncated = t >= n["max_steps"]
        done = terminated | truncated
        fresh = self._initial_physics(noise)
        next_physics = torch.where(done.unsqueeze(-1), fresh, physics)
        next_t = t.masked_fill(done, n["zero"])
        reward = torch.ones(self.num_envs, dtype=self.dtype, device=self.device)
        return Step({"physics": next_physics, "t": next_t}, next_physics, reward, terminated, truncated, physics)


def dynamics(physics: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """One Euler step of the cart-pole ODE; same operation order as gymnasium for bit parity."""
    x, x_dot, theta, theta_dot = physics.unbind(-1)
    k = constants(PHYSICS, physics)
    force = torch.where(action == 1, k["force"], k["neg_force"]).to(physics.dtype)
    costheta = torch.cos(theta)
    sintheta = torch.sin(theta)
    temp = (force + k["polemass_length"] * torch.square(theta_dot) * sintheta) / k["total_mass"]
    thetaacc = (k["gravity"] * sintheta - costheta * temp) / (
        k["length"] * (k["four_thirds"] - k["mass_pole"] * torch.square(costheta) / k["total_mass"])
    )
    xacc = temp - k["polemass_length"] * thetaacc * costheta / k["total_mass"]
    # Elementwise the same as x + TAU * x_dot and so on, in three ops instead of nine.
    return physics + k["tau"] * torch.stack((x_dot, xacc, theta_dot, thetaacc), dim=-1)
