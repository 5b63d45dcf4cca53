"""fkernel's training kernel: pure, compiled PPO on PyTorch.

The public API::

    from kernel import Config, make_train

    train = make_train(Config(total_steps=500_000))   # builds env, policy, compiled steps
    state = train.init()                               # TrainState: a pytree of tensors
    state, metrics = train.iteration(state)            # one PPO update; the input is untouched
    result = train.train()                             # the whole run: (state, progress, summary)
    group = make_train(Config(), seeds=range(8))       # 8 runs as one vmapped program

The shape: :func:`kernel.iteration.iterate` is the one PPO iteration (rollout, advantages, batch,
minibatch steps, metrics). :mod:`kernel.build` makes the stages it calls: eager, compiled one by
one, or the whole iteration compiled as one graph (fused), as :mod:`kernel.plan` decides. A group
of runs (:mod:`kernel.group`) maps it over a run axis with ``vmap``; a data-parallel rank
(:mod:`kernel.distributed`) all-reduces inside its gradient step. :mod:`kernel.train` draws each
iteration's noise from the state's key and loops; :mod:`kernel.runs` puts a run on disk
(:func:`prepare`, then :func:`execute`) and :mod:`kernel.resume` restores it. Building blocks:
``optim`` (optax-style), ``loss_scale`` (jmp-style), ``precision``, ``rng``, ``ppo``, ``rollout``,
``loop``.
"""
from kernel.config import Config
from kernel.evaluate import evaluate, load_policy
from kernel.precision import Precision
from kernel.runs import execute, prepare
from kernel.state import Progress, TrainState
from kernel.train import Trained, Trainer, make_train

__all__ = ["Config", "Precision", "Progress", "TrainState", "Trained", "Trainer", "evaluate", "execute",
           "load_policy", "make_train", "prepare"]
