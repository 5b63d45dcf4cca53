import os

import pytest
import torch
from safetensors.torch import save_file

from kernel import checkpoint as C


def sample_sections(gen):
    return {
        "params": {"trunk": {"l0": {"w": torch.randn(4, 3, generator=gen)}},
                   "heads": {"op": {"w": torch.randn(2, 4, generator=gen).to(torch.bfloat16)}}},
        "opt_state": {"adam": {"count": torch.tensor(7), "mu": {"x": torch.randn(5, generator=gen).half()}}},
        "rng": {"generator": gen.get_state()},
    }


def test_round_trip_keeps_values_shapes_and_dtypes(tmp_path, gen):
    sections = sample_sections(gen)
    path = C.save(tmp_path / "ck.safetensors", sections, {"update": 3, "config": {"a": 1}})
    loaded, meta = C.load(path)
    flat_a, flat_b = C.flatten_sections(sections), C.flatten_sections(loaded)
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        assert flat_a[k].dtype == flat_b[k].dtype and torch.equal(flat_a[k], flat_b[k]), k
    assert meta["update"] == 3 and meta["config"] == {"a": 1} and "torch" in meta["versions"]
    g = torch.Generator()
    g.set_state(loaded["rng"]["generator"])
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=gen))


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, gen, monkeypatch):
    path = C.save(tmp_path / "ck.safetensors", sample_sections(gen), {"update": 1})
    before = path.read_bytes()

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(C.os, "replace", crash)
    with pytest.raises(OSError):
        C.save(path, sample_sections(gen), {"update": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.safetensors"]  # no temp file left behind
    assert C.load(path)[1]["update"] == 1


def test_bad_files_give_one_line_errors(tmp_path, gen):
    with pytest.raises(C.CheckpointError, match="no checkpoint file"):
        C.load(tmp_path / "missing.safetensors")
    good = C.save(tmp_path / "ck.safetensors", sample_sections(gen), {})
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-50])
    random = tmp_path / "random.safetensors"
    random.write_bytes(os.urandom(4096))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign))
    for bad, msg in [(truncated, "truncated or corrupt"), (random, "truncated or corrupt"),
                     (foreign, "not an fkernel checkpoint")]:
        with pytest.raises(C.CheckpointError, match=msg) as err:
            C.load(bad)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("header, message", [
    ({"format": C.FORMAT, "format_version": "1", "fkernel": "{not json"}, "metadata that is not valid JSON"),
    ({"format": C.FORMAT, "format_version": "1", "fkernel": "[1, 2]"}, "metadata that is a JSON list"),
    ({"format": C.FORMAT, "format_version": "one", "fkernel": "{}"}, "format_version that is not an integer"),
    ({"format": C.FORMAT, "format_version": "1.5", "fkernel": "{}"}, "format_version that is not an integer"),
    ({"format": C.FORMAT, "fkernel": "{}"}, "format_version that is not an integer: None"),
])
def test_bad_metadata_gives_one_line_errors(tmp_path, header, message):
    path = tmp_path / "bad.safetensors"
    save_file({"params/w": torch.zeros(2)}, str(path), metadata=header)
    with pytest.raises(C.CheckpointError, match=message) as err:
        C.load(path)
    assert "\n" not in str(err.value)
