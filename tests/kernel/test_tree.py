"""Leaves pair by path, whatever order a dict's keys were inserted in."""
import pytest
import torch

from kernel import loss_scale, optim
from kernel.precision import PRESETS
from kernel.tree import StructureError, flatten, leaves, leaves_like, tree_map, unflatten


def test_adam_pairs_moments_with_gradients_by_path_not_dict_order():
    a, b = torch.tensor([1.0]), torch.tensor([2.0])
    tx = optim.adam(0.1)
    state = tx.init({"a": a, "b": b})
    # One step with a large gradient on a only, so that a's moments differ from b's.
    first, state = tx.update({"a": torch.tensor([5.0]), "b": torch.tensor([0.0])}, state, {"a": a, "b": b})
    grads = {"a": torch.tensor([-1.0]), "b": torch.tensor([3.0])}
    same_order, _ = tx.update(grads, state, {"a": a, "b": b})
    swapped_grads = {"b": grads["b"], "a": grads["a"]}
    other_order, _ = tx.update(swapped_grads, state, {"b": b, "a": a})
    assert list(other_order) == ["b", "a"]  # the output keeps the gradients' own layout
    for key in ("a", "b"):
        assert torch.equal(same_order[key], other_order[key])
    # The reference, torch.optim.Adam, on the same two steps for a.
    ref = a.clone().requires_grad_()
    opt = torch.optim.Adam([ref], lr=0.1)
    for g in (5.0, -1.0):
        ref.grad = torch.tensor([g])
        opt.step()
    torch.testing.assert_close(a + first["a"] + same_order["a"], ref.detach())


def test_apply_updates_pairs_by_path():
    params = {"a": torch.zeros(2), "b": torch.ones(2)}
    updates = {"b": torch.full((2,), 10.0), "a": torch.full((2,), -1.0)}
    new = optim.apply_updates(params, updates)
    assert list(new) == ["a", "b"]
    assert torch.equal(new["a"], torch.full((2,), -1.0)) and torch.equal(new["b"], torch.full((2,), 11.0))


def test_key_mismatch_is_an_error_naming_the_paths():
    tx = optim.adam(0.1)
    state = tx.init({"a": torch.zeros(1), "b": torch.zeros(1)})
    with pytest.raises(StructureError, match=r"missing \['c'\], unexpected \['a'\]"):
        tx.update({"c": torch.zeros(1), "b": torch.zeros(1)}, state, None)
    with pytest.raises(StructureError, match="missing"):
        tree_map(torch.add, {"x": {"y": torch.zeros(1)}}, {"x": {}})
    with pytest.raises(StructureError, match="x.y"):
        tree_map(torch.add, {"x": {"y": torch.zeros(1)}}, {"x": {"y": [torch.zeros(1)]}})


def test_loss_scale_select_and_casts_pair_by_path():
    new = {"w": torch.ones(2), "b": torch.zeros(2)}
    old = {"b": torch.full((2,), 7.0), "w": torch.full((2,), 9.0)}
    kept = loss_scale.select(torch.tensor(False), new, old)
    assert torch.equal(kept["w"], old["w"]) and torch.equal(kept["b"], old["b"])
    cast = PRESETS["bf16"].cast_to_compute({"b": torch.zeros(1), "n": torch.zeros(1, dtype=torch.int64)})
    assert cast["b"].dtype == torch.bfloat16 and cast["n"].dtype == torch.int64


def test_flatten_is_canonical_and_unflatten_keeps_each_trees_layout():
    x, y, z = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    one = {"b": {"q": y, "p": x}, "a": [z, None]}
    other = {"a": [z, None], "b": {"p": x, "q": y}}
    leaves_one, treedef = flatten(one)
    assert leaves_one == [z, x, y] and leaves(other) == [z, x, y]  # sorted keys, whatever the order
    assert leaves_like(other, treedef) == [z, x, y]
    rebuilt = unflatten(treedef, [t + 1 for t in leaves_one])
    assert list(rebuilt) == ["b", "a"] and list(rebuilt["b"]) == ["q", "p"] and rebuilt["a"][1] is None
    assert torch.equal(rebuilt["b"]["q"], y + 1)


def test_stacking_records_pairs_by_key_and_names_a_mismatch():
    """``stacked`` transposes dicts key by key: a record built in another key order still stacks
    by name, and one with another key set is an error naming the path."""
    from kernel.loop import stacked

    first = {"obs": torch.tensor([1.0]), "actions": {"a": torch.tensor([2.0])}, "hidden": {}, "none": None}
    swapped = {"none": None, "hidden": {}, "actions": {"a": torch.tensor([4.0])}, "obs": torch.tensor([3.0])}
    out = stacked([first, swapped])
    assert list(out) == ["obs", "actions", "hidden", "none"]  # the first record's layout
    assert torch.equal(out["obs"], torch.tensor([[1.0], [3.0]]))
    assert torch.equal(out["actions"]["a"], torch.tensor([[2.0], [4.0]]))
    assert out["hidden"] == {} and out["none"] is None
    with pytest.raises(StructureError, match="actions"):
        stacked([first, dict(swapped, actions={"b": torch.tensor([4.0])})])
