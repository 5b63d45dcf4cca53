"""Small labelled image sets for the ``morpho`` env, through torchvision.

Two sources give ``uint8`` images ``[n, 3, 32, 32]`` and ``int64`` labels in ``0..9``:

* ``shapes``: generated from a seed, needs no download. A square or a disc at a random size and
  position, filled with one of ten patterns (the class: solid, horizontal, vertical and two
  diagonal stripes, checks, dots, rings, outline, grid) in a random foreground colour on a
  contrasting random background, with a little pixel noise. Colour, outline, size and position
  carry no label: a network has to see local structure, which 1x1 convolutions cannot.
* ``cifar10``: a local CIFAR-10 folder (the "python version" archive, unpacked) read with
  ``torchvision.datasets.CIFAR10(root, download=False)``; training images come from the
  ``data_batch_*`` files, validation images from ``test_batch``.

:func:`load` then applies ``torchvision.transforms.v2`` (scale to float, normalise each channel
with the training split's mean and std) and moves both splits to the env's device once.
Augmentation (a horizontal flip per image, chosen by explicit noise) is :func:`flip`.
"""
from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import NamedTuple

import torch

from envs.base import EnvOptionError

DATASETS = ("shapes", "cifar10")
NUM_CLASSES = 10
SIZE = 32
CLASS_NAMES = ("solid", "horizontal stripes", "vertical stripes", "diagonal stripes /", "diagonal stripes \\",
               "checks", "dots", "rings", "outline", "grid")
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR_LAYOUT = f"{CIFAR_FOLDER}/ holding data_batch_1..data_batch_5, test_batch and batches.meta"


class DataError(EnvOptionError):
    """A dataset request that cannot be met (unknown name, bad size, missing or malformed files)."""


class ImageData(NamedTuple):
    train_x: torch.Tensor  # float [n_train, 3, 32, 32], normalised
    train_y: torch.Tensor  # int64 [n_train]
    val_x: torch.Tensor
    val_y: torch.Tensor


def class_masks(u: torch.Tensor, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor, period: torch.Tensor,
                inside: torch.Tensor) -> torch.Tensor:
    """``[10, ...]`` boolean foreground masks of every class: a shape (``inside``) filled with the
    class's pattern. ``u, v``: shape-relative coordinates (the shape spans ``[-1, 1]``); ``x, y``:
    pixel coordinates, already shifted by a random phase; ``period``: the pattern's period in pixels."""
    def bands(t):
        return torch.floor(t / period).long() % 2 == 0

    radius = torch.sqrt(x * x + y * y)
    edge = inside & ~((u.abs() <= 0.7) & (v.abs() <= 0.7) & (u * u + v * v <= 0.7 ** 2 * 2))
    return torch.stack([
        inside,
        inside & bands(y),
        inside & bands(x),
        inside & bands((x + y) / 1.4142),
        inside & bands((x - y) / 1.4142),
        inside & (bands(x) ^ bands(y)),
        inside & ((torch.remainder(x, period) - period / 2) ** 2 + (torch.remainder(y, period) - period / 2) ** 2
                  <= (period / 3.5) ** 2),
        inside & bands(radius),
        edge,
        inside & ((torch.remainder(x, period) < 1.5) | (torch.remainder(y, period) < 1.5)),
    ])


def shapes(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images and their labels, the same for the same ``seed``. The label is the pattern
    that fills the shape; the outline (square or disc), size, position, phase and colours are
    random, so they tell nothing about the class."""
    g = torch.Generator().manual_seed(int(seed))
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    half = 8.0 + 6.0 * torch.rand(n, generator=g)  # half-size in pixels
    centre = half.unsqueeze(-1) + (SIZE - 2 * half).unsqueeze(-1) * torch.rand(n, 2, generator=g)
    disc = torch.rand(n, generator=g) < 0.5
    period = (7.0 + 3.0 * torch.rand(n, generator=g)).view(n, 1, 1)
    phase = period.view(n, 1, 1, 1) * torch.rand(n, 2, 1, 1, generator=g)
    fg = torch.rand(n, 3, generator=g)
    # Background: every channel at least 0.35 away from the foreground (mod 1), so shapes show.
    bg = torch.remainder(fg + 0.5 + 0.3 * (torch.rand(n, 3, generator=g) - 0.5), 1.0)
    pixel_noise = 0.04 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    grid = torch.arange(SIZE, dtype=torch.float32) + 0.5
    x = grid.view(1, 1, SIZE) - centre[:, 0].view(n, 1, 1)
    y = grid.view(1, SIZE, 1) - centre[:, 1].view(n, 1, 1)
    u, v = x / half.view(n, 1, 1), y / half.view(n, 1, 1)
    inside = torch.where(disc.view(n, 1, 1), u * u + v * v <= 1, (u.abs() <= 1) & (v.abs() <= 1))
    mask = class_masks(u, v, x + phase[:, 0], y + phase[:, 1], period, inside)[labels, torch.arange(n)]
    image = torch.where(mask.unsqueeze(1), fg.view(n, 3, 1, 1), bg.view(n, 3, 1, 1)) + pixel_noise
    return (image.clamp(0, 1) * 255).round().to(torch.uint8), labels


def transforms_v2():
    """``torchvision.transforms.v2``, imported on first use: only the image sets need torchvision,
    so the other envs (and ``import envs``) do not pay for it."""
    from torchvision.transforms import v2

    return v2


@functools.cache
def local_cifar10() -> type:
    """``torchvision.datasets.CIFAR10`` that checks the files are there instead of their MD5 sums,
    so a subset in CIFAR's own format (for example one made by a test) reads too."""
    from torchvision import datasets

    class LocalCIFAR10(datasets.CIFAR10):
        train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
        test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
        meta = {**datasets.CIFAR10.meta, "md5": None}

    return LocalCIFAR10


def check_cifar_folder(root: str | Path) -> Path:
    """The CIFAR-10 batch folder under ``root``; :class:`DataError` naming what is missing."""
    root = Path(root)
    folder = root / CIFAR_FOLDER
    missing = [name for name in CIFAR_FILES if not (folder / name).is_file()]
    if missing:
        shown = ", ".join(missing) if len(missing) < len(CIFAR_FILES) else "every file"
        raise DataError(f"no CIFAR-10 in {root}: expected {root}/{CIFAR_LAYOUT} (missing {shown})")
    return folder


def cifar10(root: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10's training or test split from the folder ``root``, as uint8 ``[n, 3, 32, 32]``."""
    root = Path(root)
    folder = check_cifar_folder(root)
    try:
        data = local_cifar10()(str(root), train=train, download=False)
        images = torch.as_tensor(data.data).permute(0, 3, 1, 2).contiguous()
        labels = torch.as_tensor(data.targets, dtype=torch.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, RuntimeError, OSError) as e:
        raise DataError(f"malformed CIFAR-10 files in {folder}: {type(e).__name__}: {e}".splitlines()[0]) from None
    if images.dtype != torch.uint8 or len(labels) != len(images) or not len(images):
        raise DataError(f"malformed CIFAR-10 files in {folder}: expected uint8 images with one label each")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataError(f"malformed CIFAR-10 files in {folder}: labels outside 0..{NUM_CLASSES - 1}")
    return images, labels


def check_request(dataset: str, train_size: int, val_size: int, data_dir) -> None:
    """Raise :class:`DataError` naming the first problem with a dataset request."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    for name, value in (("train_size", train_size), ("val_size", val_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DataError(f"{name} must be a positive number of images, got {value!r}")
    if dataset == "cifar10" and data_dir is None:
        raise DataError(f"dataset cifar10 needs a data folder (data_dir) holding {CIFAR_LAYOUT}")


def raw(dataset: str, train_size: int, val_size: int, data_dir=None, seed: int = 0) -> tuple:
    """Unnormalised ``(train_images, train_labels, val_images, val_labels)``."""
    check_request(dataset, train_size, val_size, data_dir)
    if dataset == "shapes":
        images, labels = shapes(train_size + val_size, seed)
        return images[:train_size], labels[:train_size], images[train_size:], labels[train_size:]
    train_x, train_y = cifar10(data_dir, train=True)
    val_x, val_y = cifar10(data_dir, train=False)
    for split, have, want in (("training", len(train_x), train_size), ("test", len(val_x), val_size)):
        if have < want:
            raise DataError(f"CIFAR-10 in {data_dir} has {have} {split} images, fewer than the {want} asked for")
    return train_x[:train_size], train_y[:train_size], val_x[:val_size], val_y[:val_size]


def normaliser(train_images: torch.Tensor):
    """Scale uint8 to [0, 1], then normalise each channel by the training split's statistics."""
    scaled = train_images.float() / 255.0
    mean = scaled.mean(dim=(0, 2, 3))
    std = scaled.std(dim=(0, 2, 3)).clamp(min=1e-3)
    v2 = transforms_v2()
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean.tolist(), std.tolist())])


def load(dataset: str = "shapes", train_size: int = 2048, val_size: int = 512, data_dir=None, seed: int = 0,
         device="cpu") -> ImageData:
    """Both splits, normalised and on ``device``."""
    train_x, train_y, val_x, val_y = raw(dataset, train_size, val_size, data_dir, seed)
    transform = normaliser(train_x)
    return ImageData(transform(train_x).to(device), train_y.to(device), transform(val_x).to(device),
                     val_y.to(device))


def flip(images: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """``images`` (``[..., 3, H, W]``) mirrored left-right where ``chosen`` (their leading shape)."""
    mirrored = transforms_v2().functional.horizontal_flip(images)
    return torch.where(chosen.reshape(*chosen.shape, *[1] * (images.dim() - chosen.dim())), mirrored, images)


__all__ = ["DATASETS", "DataError", "ImageData", "cifar10", "flip", "load", "shapes"]
