"""One-file checkpoints: safetensors tensors keyed ``section/dotted.path`` plus JSON metadata.

Writes are atomic: the bytes go to a temp file in the same folder, are flushed and fsynced, then
renamed over the target, so a crash mid-write leaves the previous file intact. Every way a load can
fail raises :class:`CheckpointError` with a one-line message saying what is wrong.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from kernel.tree import flatten_with_paths, unflatten_paths

FORMAT = "fkernel-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint cannot be read, is not an fkernel checkpoint, or does not fit the run."""


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        fk = version("fkernel")
    except PackageNotFoundError:
        fk = "unknown"
    return {"fkernel": fk, "torch": torch.__version__}


def flatten_sections(sections: dict) -> dict:
    """``{"params": tree, "rng": tensor, ...}`` -> ``{"params/trunk.actor.l0.w": tensor, "rng": tensor, ...}``."""
    flat = {}
    for section, tree in sections.items():
        if isinstance(tree, torch.Tensor):  # a section that is one tensor (a run's random key)
            flat[section] = tree
            continue
        for path, leaf in flatten_with_paths(tree).items():
            flat[f"{section}/{path}"] = leaf
    return flat


def unflatten_sections(flat: dict) -> dict:
    grouped: dict = {}
    whole = {}
    for key, value in flat.items():
        section, slash, path = key.partition("/")
        if slash:
            grouped.setdefault(section, {})[path] = value
        else:
            whole[section] = value
    return {**{section: unflatten_paths(paths) for section, paths in grouped.items()}, **whole}


def to_bytes(sections: dict, meta: dict) -> bytes:
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in flatten_sections(sections).items()}
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "fkernel": json.dumps(meta, sort_keys=True)}
    return st_save(tensors, metadata=header)


def save(path: str | Path, sections: dict, meta: dict) -> Path:
    """Atomically write ``sections`` (dict of pytrees of tensors) and ``meta`` (JSON-able) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_bytes(sections, dict(meta, versions=versions()))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load(path: str | Path) -> tuple[dict, dict]:
    """Read a checkpoint; returns ``(sections, meta)`` or raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    data = path.read_bytes()
    try:
        flat = st_load(data)
        header = _header(data)
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt): "
                              f"{_first_line(e)}") from None
    if header.get("format") != FORMAT or "fkernel" not in header:
        raise CheckpointError(f"{path} is a safetensors file but not an fkernel checkpoint (no fkernel metadata)")
    version = header.get("format_version")
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise CheckpointError(f"{path} has a checkpoint format_version that is not an integer: {version!r}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {version}; this fkernel reads <= {FORMAT_VERSION}")
    try:
        meta = json.loads(header["fkernel"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} has fkernel metadata that is not valid JSON: {e.msg}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} has fkernel metadata that is a JSON {type(meta).__name__}, not an object")
    return unflatten_sections(flat), meta


def _header(data: bytes) -> dict:
    # safetensors layout: 8-byte little-endian header length, then a JSON header.
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {}) or {}


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
