"""The eager gradient by autograd's tape (``taped_grad_and_value``) against ``torch.func.grad_and_value``
on the PPO loss of a real rollout: the same gradients, value and metrics, bit for bit."""
import pytest
import torch

from kernel import rng
from kernel import train as T
from kernel.build import build, init_state, make_optimizer
from kernel.config import Config
from kernel.iteration import permutations
from kernel.ppo import hyper_tensors, make_grad_step, taped_grad_and_value
from kernel.tree import flatten_with_paths

CONFIG = Config(num_envs=4, num_steps=32, num_minibatches=2, compile=False)


@pytest.fixture(scope="module")
def case():
    built = build(CONFIG)
    state = init_state(built, 0)
    _, _, batch = T.collect(built, state.params, state.carry, rng.generator(state.rng))
    idx = permutations(torch.rand(1, 128, generator=torch.Generator().manual_seed(1)), 64)[0]
    hyper = hyper_tensors(CONFIG, torch.zeros((), dtype=torch.int64))
    return built, state, batch, idx, hyper


def gradients(built, config: Config, tape: bool):
    step = make_grad_step(built.policy, make_optimizer(config), config.clip_vloss, config.norm_adv, None,
                          config.norm_entropy, config.head_average, tape=tape)
    return step.gradients


def flat(tree) -> dict:
    return flatten_with_paths(tree)


def test_eager_builds_take_the_tape():
    assert build(CONFIG).stages.grad_step.taped
    assert not make_grad_step(build(CONFIG).policy, make_optimizer(CONFIG), True, True).taped  # torch.func's default


def test_tape_equals_torch_func_bit_for_bit(case):
    built, state, batch, idx, hyper = case
    by_func = gradients(built, CONFIG, tape=False)(state.params, state.loss_scale, batch, idx, hyper)
    by_tape = gradients(built, CONFIG, tape=True)(state.params, state.loss_scale, batch, idx, hyper)
    grads_f, grads_t = flat(by_func[0]), flat(by_tape[0])
    assert list(grads_t) == list(grads_f)  # the params' own layout
    for path in grads_f:
        assert torch.isfinite(grads_f[path]).all() and grads_f[path].abs().sum() > 0, path
        assert torch.equal(grads_t[path], grads_f[path]), path
        assert not grads_t[path].requires_grad
    assert torch.equal(by_tape[1], by_func[1]) and not by_tape[1].requires_grad
    assert by_tape[2].keys() == by_func[2].keys()
    for key in by_func[2]:
        assert torch.equal(by_tape[2][key], by_func[2][key]), key
        assert not by_tape[2][key].requires_grad, key


@pytest.mark.parametrize("field, value", [("ent_coef", 0.0), ("vf_coef", 1.0)])
def test_the_comparison_sees_a_changed_loss(case, field, value):
    """The bitwise comparison above has teeth on this batch: a loss with the entropy term dropped or
    the value term reweighted gives other gradients."""
    built, state, batch, idx, hyper = case
    wrong_hyper = dict(hyper, **{field: torch.tensor(value)})
    right = flat(gradients(built, CONFIG, tape=False)(state.params, state.loss_scale, batch, idx, hyper)[0])
    wrong = flat(gradients(built, CONFIG, tape=True)(state.params, state.loss_scale, batch, idx, wrong_hyper)[0])
    assert any(not torch.equal(wrong[p], right[p]) for p in right)


def test_unused_leaf_gets_zeros_as_torch_func_gives():
    params = {"used": torch.tensor([1.0, 2.0]), "unused": torch.tensor([3.0])}
    loss = lambda p, x: ((p["used"] * x).sum(), {"x": p["used"] * 2})
    grads, (value, aux) = taped_grad_and_value(loss)(params, torch.tensor([3.0, 4.0]))
    expected, (value_f, _) = torch.func.grad_and_value(loss, has_aux=True)(params, torch.tensor([3.0, 4.0]))
    assert torch.equal(grads["unused"], torch.zeros(1)) and torch.equal(grads["unused"], expected["unused"])
    assert torch.equal(grads["used"], expected["used"]) and torch.equal(value, value_f)
    assert not aux["x"].requires_grad and not params["used"].requires_grad


def test_tape_needs_an_aux():
    with pytest.raises(ValueError, match="value, aux"):
        taped_grad_and_value(lambda p: p.sum(), has_aux=False)
