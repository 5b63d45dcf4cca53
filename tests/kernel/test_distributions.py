import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import distributions as D


def random_mask(gen, shape):
    mask = torch.rand(shape, generator=gen) < 0.6
    mask[torch.arange(shape[0]), torch.randint(shape[1], (shape[0],), generator=gen)] = True
    return mask


def test_log_prob_and_entropy_match_torch_categorical_float64(gen):
    B, A = 64, 7
    logits = torch.randn(B, A, generator=gen) * 3
    mask = random_mask(gen, (B, A))
    mask[0] = False
    mask[0, 3] = True  # a row with a single valid action
    actions = torch.multinomial(mask.double(), 1, generator=gen).squeeze(-1)
    ref_logits = logits.double().masked_fill(~mask, float("-inf"))
    ref = torch.distributions.Categorical(logits=ref_logits)
    torch.testing.assert_close(D.log_prob(logits, actions, mask).double(), ref.log_prob(actions), atol=2e-6, rtol=0)
    ref_entropy = -(ref.probs * torch.where(mask, ref.logits, torch.zeros_like(ref.logits))).sum(-1)
    torch.testing.assert_close(D.entropy(logits, mask).double(), ref_entropy, atol=2e-6, rtol=0)
    assert D.entropy(logits, mask)[0].item() == 0.0


def test_unmasked_matches_categorical(gen):
    logits = torch.randn(32, 5, generator=gen)
    actions = torch.randint(5, (32,), generator=gen)
    ref = torch.distributions.Categorical(logits=logits.double())
    torch.testing.assert_close(D.log_prob(logits, actions).double(), ref.log_prob(actions), atol=1e-6, rtol=0)
    torch.testing.assert_close(D.entropy(logits).double(), ref.entropy(), atol=1e-6, rtol=0)


def test_masked_actions_have_probability_exactly_zero_and_finite_gradients(gen):
    logits = torch.randn(16, 6, generator=gen, requires_grad=True)
    mask = random_mask(gen, (16, 6))
    probs = D.log_probs(logits, mask).exp()
    assert (probs[~mask] == 0).all()
    loss = D.entropy(logits, mask).sum() + D.log_prob(logits, mask.float().argmax(-1), mask).sum()
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[~mask] == 0).all()


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9))
def test_sampling_never_picks_a_masked_action(seed, n):
    g = torch.Generator().manual_seed(seed)
    mask = random_mask(g, (128, n))
    logits = torch.randn(128, n, generator=g) * 10
    a = D.sample(logits, torch.rand(128, n, generator=g), mask)
    assert mask[torch.arange(128), a].all()


def test_gumbel_max_sampling_follows_the_distribution(gen):
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0])
    n = 200_000
    a = D.sample(logits.expand(n, 4), torch.rand(n, 4, generator=gen))
    freq = torch.bincount(a, minlength=4).double() / n
    torch.testing.assert_close(freq, torch.softmax(logits.double(), 0), atol=5e-3, rtol=0)


def test_extreme_uniforms_stay_finite():
    logits = torch.zeros(2, 3)
    u = torch.tensor([[0.0, 1.0, 0.5], [1.0, 0.0, 1.0]])
    a = D.sample(logits, u)
    assert a.tolist() == [1, 0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_non_float32_logits_are_refused(dtype):
    with pytest.raises(TypeError, match="float32"):
        D.log_prob(torch.zeros(2, 3, dtype=dtype), torch.zeros(2, dtype=torch.long))


def test_row_without_valid_action_is_an_error():
    mask = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match="no valid action"):
        D.log_probs(torch.zeros(2, 2), mask)
