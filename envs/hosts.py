"""Host networks and seed blueprints as pure functions over parameter dicts (the ``morpho`` env's
networks), written for one host: ``torch.func.vmap`` adds the sub-environment axis.

Host (crippled on purpose): the image at half resolution (:func:`inputs`, 2x2 average pooling done
once for the whole data set), a 1x1 stem to ``C`` channels, then three blocks of 1x1 convolution +
SiLU (smooth: with 4 channels, ReLU units die and stay dead) with a 2x2 average pool between
blocks, a global average pool and a linear classifier. With ``C = 4`` that is 126 parameters and
no kernel wider than one pixel: it sees colour, and colour carries no label in the shapes set.

Seeds: slot ``k`` sits after block ``k``. A slot holds parameters for every blueprint; its one-hot
``blueprint`` row picks the one in use, so every host has the same structure and vmap applies.
A seed's output ``s`` is blended residually, ``h + alpha * s``: alpha 0 leaves the host exactly as
it was. A seed in training (``gate`` 1) learns in the host's shadow: it adds ``s - s.detach()``
(zero in value) on top of the host's detached features, so it gets the gradient of the host's
loss as if blended at alpha 1 while the host's outputs and its gradients stay unchanged.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

NUM_CLASSES = 10
BLOCKS = 3
BLUEPRINTS = ("noop", "conv3x3", "depthwise3x3", "bottleneck", "norm", "conv1x1")
SEED_INIT_SCALE = 0.5  # seeds start gentler than He init: they are added onto working features


def host_shapes(channels: int) -> dict:
    c = channels
    shapes = {"stem": {"w": (c, 3), "b": (c,)}}
    shapes.update({f"block{k}": {"w": (c, c), "b": (c,)} for k in range(BLOCKS)})
    shapes["head"] = {"w": (NUM_CLASSES, c), "b": (NUM_CLASSES,)}
    return shapes


def blueprint_shapes(channels: int) -> dict:
    c, mid = channels, max(1, channels // 2)
    return {
        "conv3x3": {"w": (c, c, 3, 3), "b": (c,)},
        "depthwise3x3": {"w": (c, 1, 3, 3), "b": (c,)},
        "bottleneck": {"down": (mid, c), "down_b": (mid,), "up": (c, mid), "b": (c,)},
        "norm": {"g": (c,), "b": (c,)},
        "conv1x1": {"w": (c, c), "b": (c,)},
    }


def count(shapes: dict) -> int:
    return sum(count(v) if isinstance(v, dict) else math.prod(v) for v in shapes.values())


def blueprint_params(channels: int) -> tuple:
    """Parameter count of each blueprint, in ``BLUEPRINTS`` order (noop: 0)."""
    shapes = blueprint_shapes(channels)
    return tuple(count(shapes[name]) if name in shapes else 0 for name in BLUEPRINTS)


def carve(z: torch.Tensor, shapes: dict, scale: float = 1.0) -> dict:
    """Parameters shaped as ``shapes`` from standard normals ``z`` (``[..., count(shapes)]``):
    weights get He scaling, biases and norm shifts start at 0, norm gains at 1."""
    out, start, lead = {}, 0, z.shape[:-1]
    for name, shape in shapes.items():
        if isinstance(shape, dict):
            size = count(shape)
            out[name] = carve(z[..., start:start + size], shape, scale)
        else:
            size = math.prod(shape)
            if name == "g":
                value = torch.ones(*lead, *shape, dtype=z.dtype, device=z.device)
            elif name in ("b", "down_b"):
                value = torch.zeros(*lead, *shape, dtype=z.dtype, device=z.device)
            else:
                fan_in = math.prod(shape[1:])
                value = z[..., start:start + size].reshape(*lead, *shape) * (scale * math.sqrt(2.0 / fan_in))
            out[name] = value
        start += size
    return out


def init_host(z: torch.Tensor, channels: int) -> dict:
    return carve(z, host_shapes(channels))


def init_slot(z: torch.Tensor, channels: int) -> dict:
    return carve(z, blueprint_shapes(channels), SEED_INIT_SCALE)


def pointwise(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1x1 convolution of ``[B, C, H, W]`` (as ``conv2d``: under vmap it becomes one grouped convolution)."""
    return F.conv2d(x, w[:, :, None, None], b)


def conv3x3(p: dict, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, p["w"], p["b"], padding=1)


def depthwise3x3(p: dict, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, p["w"], p["b"], padding=1, groups=x.shape[1])


def bottleneck(p: dict, x: torch.Tensor) -> torch.Tensor:
    return pointwise(F.silu(pointwise(x, p["down"], p["down_b"])), p["up"], p["b"])


def norm(p: dict, x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = ((x * x).mean(dim=(2, 3), keepdim=True) - mean * mean).clamp(min=0.0)  # torch.var is slow under vmap
    return (x - mean) * torch.rsqrt(var + 1e-5) * p["g"].view(-1, 1, 1) + p["b"].view(-1, 1, 1)


def conv1x1(p: dict, x: torch.Tensor) -> torch.Tensor:
    return pointwise(x, p["w"], p["b"])


APPLY: dict[str, Callable] = {"conv3x3": conv3x3, "depthwise3x3": depthwise3x3, "bottleneck": bottleneck,
                              "norm": norm, "conv1x1": conv1x1}


def inputs(images: torch.Tensor) -> torch.Tensor:
    """What a host sees of ``[..., 3, 32, 32]`` images: 2x2 average pooled to 16x16. Done once per
    data set (it commutes with the horizontal flip used for augmentation)."""
    return F.avg_pool2d(images.reshape(-1, *images.shape[-3:]), 2).reshape(*images.shape[:-2], 16, 16)


LINEAR = ("conv3x3", "depthwise3x3", "conv1x1")  # blueprints that are one convolution each


def kernel3x3(name: str, p: dict) -> torch.Tensor:
    """A linear blueprint's weights as a full ``[C, C, 3, 3]`` kernel."""
    if name == "conv3x3":
        return p["w"]
    c = p["w"].shape[0]
    eye = torch.eye(c, dtype=p["w"].dtype, device=p["w"].device)
    if name == "depthwise3x3":
        return eye[:, :, None, None] * p["w"][:, 0][:, None]  # each output channel sees its own channel
    return F.pad(p["w"][:, :, None, None], (1, 1, 1, 1))  # conv1x1: the centre tap


def seed_output(slot: dict, weights: torch.Tensor, x: torch.Tensor, active: tuple) -> torch.Tensor:
    """Sum of the ``active`` blueprints' outputs (indices into ``BLUEPRINTS``), each times its
    one-hot ``weights`` entry; blueprints no host uses this step are left out of the graph.

    The linear blueprints in use are merged into one 3x3 kernel first (a host uses at most one of
    them, the rest weigh 0): under vmap every host computes every active blueprint, and one
    convolution costs a third of three."""
    out = torch.zeros_like(x)
    names = [BLUEPRINTS[b] for b in active]
    linear = [b for b in active if BLUEPRINTS[b] in LINEAR]
    if any(BLUEPRINTS[b] != "conv1x1" for b in linear):
        kernel = sum(weights[b].to(x.dtype) * kernel3x3(BLUEPRINTS[b], slot[BLUEPRINTS[b]]) for b in linear)
        bias = sum(weights[b].to(x.dtype) * slot[BLUEPRINTS[b]]["b"] for b in linear)
        out = out + F.conv2d(x, kernel, bias, padding=1)
        names = [n for n in names if n not in LINEAR]
    for name in names:
        out = out + weights[BLUEPRINTS.index(name)].to(x.dtype) * APPLY[name](slot[name], x)
    return out


def logits(host: dict, seeds: dict, weights: torch.Tensor, alpha: torch.Tensor, gate: torch.Tensor,
           x: torch.Tensor, active: tuple) -> torch.Tensor:
    """Class logits (float32) of one host with its seeds.

    ``weights`` ``[S, len(BLUEPRINTS)]``: each slot's one-hot blueprint (zero rows for slots not in
    use); ``alpha`` ``[S]``: blend of each seed; ``gate`` ``[S]``: 1 for seeds training in the
    shadow; ``active``: per slot, the blueprint indices to build. ``x``: :func:`inputs` of the
    images, ``[B, 3, 16, 16]``."""
    dtype = host["stem"]["w"].dtype
    h = F.silu(pointwise(x.to(dtype), host["stem"]["w"], host["stem"]["b"]))
    for k in range(BLOCKS):
        h = F.silu(pointwise(h, host[f"block{k}"]["w"], host[f"block{k}"]["b"]))
        if k < len(active) and active[k]:
            training = gate[k].to(h.dtype)
            shadow_input = torch.where(gate[k] > 0, h.detach(), h)
            s = seed_output(seeds[f"slot{k}"], weights[k], shadow_input, active[k])
            h = h + alpha[k].to(h.dtype) * s + training * (s - s.detach())
        if k < BLOCKS - 1:
            h = F.avg_pool2d(h, 2)
    features = h.mean(dim=(2, 3))
    return (features @ host["head"]["w"].T + host["head"]["b"]).float()
