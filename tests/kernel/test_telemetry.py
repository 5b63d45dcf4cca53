"""Per-group gradient statistics against a plain reference: each group's leaves concatenated, the
statistics computed on the one vector. Wrong references (a leaf left out, a ratio upside down, a
NaN counted as an Inf) must fail the same comparison."""
import pytest
import torch

from kernel import telemetry
from kernel.tree import flatten_with_paths


def problem():
    gen = torch.Generator().manual_seed(7)
    params = {"trunk": {"l0": {"w": torch.randn(8, 4, generator=gen), "b": torch.randn(8, generator=gen)},
                        "l1": {"w": torch.randn(8, 8, generator=gen), "b": torch.zeros(8)}},
              "heads": {"op": {"w": torch.randn(3, 8, generator=gen), "b": torch.randn(3, generator=gen)},
                        "slot": {"w": torch.randn(2, 8, generator=gen), "b": torch.randn(2, generator=gen)}},
              "value": {"w": torch.randn(1, 8, generator=gen), "b": torch.randn(1, generator=gen)}}
    grads = {"trunk": {"l0": {"w": torch.randn(8, 4, generator=gen), "b": torch.zeros(8)},
                       "l1": {"w": torch.randn(8, 8, generator=gen) * 1e3, "b": torch.randn(8, generator=gen)}},
             "heads": {"op": {"w": torch.zeros(3, 8), "b": torch.zeros(3)},  # a dead head
                       "slot": {"w": torch.randn(2, 8, generator=gen), "b": torch.tensor([float("nan"), 1.0])}},
             "value": {"w": torch.tensor([[float("inf")] + [0.5] * 7]), "b": torch.randn(1, generator=gen)}}
    updates = {"trunk": {"l0": {"w": torch.randn(8, 4, generator=gen) * 1e-3, "b": torch.zeros(8)},
                         "l1": {"w": torch.randn(8, 8, generator=gen) * 1e-3,
                                "b": torch.randn(8, generator=gen) * 1e-3}},
               "heads": {"op": {"w": torch.zeros(3, 8), "b": torch.zeros(3)},
                         "slot": {"w": torch.randn(2, 8, generator=gen) * 1e-2, "b": torch.randn(2, generator=gen)}},
               "value": {"w": torch.randn(1, 8, generator=gen), "b": torch.randn(1, generator=gen)}}
    return params, grads, updates


def reference(grads, params, updates, groups, leave_out=None, ratio_upside_down=False, nan_as_inf=False) -> dict:
    g_flat, p_flat, u_flat = (flatten_with_paths(t) for t in (grads, params, updates))
    out = {}
    for group in groups:
        paths = [p for p in g_flat if (p == group or p.startswith(group + ".")) and p != leave_out]
        vec = lambda flat, paths=paths: torch.cat([flat[p].reshape(-1) for p in paths]).double()
        g, p, u = vec(g_flat), vec(p_flat), vec(u_flat)
        ratio = (u.norm() / (p.norm() + 1e-12)) if not ratio_upside_down else p.norm() / (u.norm() + 1e-12)
        nan, inf = float(g.isnan().sum()), float(g.isinf().sum())
        out[group] = {"norm": float(g.norm()), "max_abs": float(g.abs().max()), "nan": inf if nan_as_inf else nan,
                      "inf": nan if nan_as_inf else inf, "zero_frac": float((g == 0).double().mean()),
                      "update_ratio": float(ratio)}
    return out


def mismatches(table: dict, ref: dict) -> list:
    found = []
    for group, stats in ref.items():
        for stat, want in stats.items():
            got = table[group][stat]
            same = got == want or (got != got and want != want) or abs(got - want) <= 1e-5 * abs(want)
            if not same:
                found.append(f"{group}/{stat}: {got} vs {want}")
    return found


def test_grad_stats_match_the_concatenated_reference():
    params, grads, updates = problem()
    groups = telemetry.default_groups(params)
    assert groups == ("trunk", "heads.op", "heads.slot", "value")
    table = telemetry.group_table(telemetry.grad_stats(grads, params, updates, groups))
    assert mismatches(table, reference(grads, params, updates, groups)) == []
    assert table["heads.op"]["zero_frac"] == 1.0 and table["heads.slot"]["nan"] == 1.0 and table["value"]["inf"] == 1.0


@pytest.mark.parametrize("wrong", [dict(leave_out="trunk.l1.w"), dict(leave_out="value.b"),
                                   dict(ratio_upside_down=True), dict(nan_as_inf=True)], ids=str)
def test_a_wrong_reference_fails_the_comparison(wrong):
    params, grads, updates = problem()
    groups = telemetry.default_groups(params)
    table = telemetry.group_table(telemetry.grad_stats(grads, params, updates, groups))
    assert mismatches(table, reference(grads, params, updates, groups, **wrong)) != []


def finite_problem():
    """The same trees with the NaN and the Inf replaced: eagerly, these take the per-leaf-norm form."""
    params, grads, updates = problem()
    grads["heads"]["slot"]["b"] = torch.tensor([-3.0, 1.0])
    grads["value"]["w"] = torch.tensor([[0.0] + [0.5] * 7])
    return params, grads, updates


def test_finite_grad_stats_take_the_leaf_norm_form_and_match_the_reference():
    params, grads, updates = finite_problem()
    groups = telemetry.default_groups(params)
    members = telemetry.grouped_paths(tuple(flatten_with_paths(grads)), groups)
    flats = [flatten_with_paths(t) for t in (grads, params, updates)]
    assert telemetry.finite_stats_from_leaf_norms(*flats, members) is not None
    table = telemetry.group_table(telemetry.grad_stats(grads, params, updates, groups))
    assert mismatches(table, reference(grads, params, updates, groups)) == []
    assert table["heads.op"]["zero_frac"] == 1.0 and table["trunk"]["zero_frac"] == pytest.approx(8 / 112)
    assert table["value"]["zero_frac"] == pytest.approx(1 / 9)


def test_non_finite_gradients_are_counted_by_the_concatenated_form():
    params, grads, updates = problem()
    members = telemetry.grouped_paths(tuple(flatten_with_paths(grads)), telemetry.default_groups(params))
    flats = [flatten_with_paths(t) for t in (grads, params, updates)]
    assert telemetry.finite_stats_from_leaf_norms(*flats, members) is None


def moved_leaf(layout):  # the first leaf counted in the last group instead of its own
    member = layout.member.clone()
    member[:, 0] = 0.0
    member[-1, 0] = 1.0
    return layout._replace(member=member, member_t=member.T.contiguous())


def leaves_for_sizes(layout):  # a group's size taken as its number of leaves
    return layout._replace(sizes=layout.member.sum(1))


@pytest.mark.parametrize("wrong", [moved_leaf, leaves_for_sizes], ids=lambda f: f.__name__)
def test_a_wrong_leaf_layout_fails_the_comparison(wrong, monkeypatch):
    params, grads, updates = finite_problem()
    groups = telemetry.default_groups(params)
    right = telemetry.leaf_layout
    monkeypatch.setattr(telemetry, "leaf_layout", lambda *a: wrong(right(*a)))
    table = telemetry.group_table(telemetry.grad_stats(grads, params, updates, groups))
    assert mismatches(table, reference(grads, params, updates, groups)) != []
