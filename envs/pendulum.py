"""Pendulum-v1 as batched torch ops, matching gymnasium's reference dynamics step for step.

The state is the angle and angular velocity; the observation ``(cos th, sin th, thdot)``; the
action a torque in [-2, 2] (clipped here, where it enters the env); the reward
``-(angle_normalize(th)^2 + 0.1 thdot^2 + 0.001 u^2)``. Episodes never terminate and are truncated
after 200 steps (a time limit: the return bootstraps from the last state). Reset draws th
uniform in [-pi, pi) and thdot in [-1, 1) from the explicit noise the caller passes. The state
(two numbers per sub-environment) is always float64, as gymnasium keeps it: the swinging pendulum
amplifies rounding, and a float32 state drifts from the reference within an episode. Observations
and rewards come out in ``dtype``.
"""
from __future__ import annotations

import math

import torch

from envs.base import ActionSpec, Head, Step

MAX_SPEED = 8.0
MAX_TORQUE = 2.0
DT = 0.05
G = 10.0
M = 1.0
L = 1.0


def angle_normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


class Pendulum:
    name = "pendulum"
    description = "Pendulum-v1 (gymnasium dynamics), a torque in [-2, 2], 200-step time limit"
    action_spec = ActionSpec((Head("torque", 1, "gaussian", (-MAX_TORQUE,), (MAX_TORQUE,)),))
    obs_dim = 3
    solved_return = None  # no official bar; the preset aims at -250 or better

    def __init__(self, num_envs: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 max_steps: int = 200):
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_steps = max_steps

    def noise_shape(self) -> tuple:
        """Uniforms one ``reset`` or ``step`` consumes (step uses them for auto-reset)."""
        return (self.num_envs, 2)

    def _initial(self, noise: torch.Tensor) -> torch.Tensor:
        high = torch.tensor([math.pi, 1.0], dtype=torch.float64, device=noise.device)
        return (noise.to(torch.float64) * 2.0 - 1.0) * high

    @staticmethod
    def observe(physics: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        th, thdot = physics.unbind(-1)
        return torch.stack((torch.cos(th), torch.sin(th), thdot), dim=-1).to(dtype)

    def reset(self, noise: torch.Tensor):
        physics = self._initial(noise)
        steps = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        return {"physics": physics, "t": steps}, self.observe(physics, self.dtype)

    def step(self, state: dict, action, noise: torch.Tensor) -> Step:
        if isinstance(action, dict):
            action = action["torque"]
        u = action.reshape(self.num_envs, -1)[:, 0].clamp(-MAX_TORQUE, MAX_TORQUE)
        physics, cost = dynamics(state["physics"], u)
        t = state["t"] + 1
        truncated = t >= self.max_steps
        terminated = torch.zeros_like(truncated)
        next_physics = torch.where(truncated.unsqueeze(-1), self._initial(noise), physics)
        next_t = torch.where(truncated, torch.zeros_like(t), t)
        return Step({"physics": next_physics, "t": next_t}, self.observe(next_physics, self.dtype),
                    (-cost).to(self.dtype), terminated, truncated, self.observe(physics, self.dtype))


def dynamics(physics: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the pendulum and its cost, in gymnasium's operation order. gymnasium's torque is a
    float32 Box action, and numpy keeps the terms it enters in float32: so do these."""
    th, thdot = physics.unbind(-1)
    u = u.to(torch.float32)
    cost = angle_normalize(th) ** 2 + 0.1 * thdot**2 + (0.001 * (u**2)).to(physics.dtype)
    newthdot = thdot + (3 * G / (2 * L) * torch.sin(th) + (3.0 / (M * L**2) * u).to(physics.dtype)) * DT
    newthdot = newthdot.clamp(-MAX_SPEED, MAX_SPEED)
    newth = th + newthdot * DT
    return torch.stack((newth, newthdot), dim=-1), cost
