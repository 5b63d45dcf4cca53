"""fkernel's training kernel: pure, compiled PPO on PyTorch.

The public API::

    from kernel import Config, make_train

    train = make_train(Config(total_steps=500_000))   # builds env, policy, compiled steps
    state = train.init(seed=0)                         # TrainState: a pytree of tensors
    state, metrics = train.iteration(state)            # one PPO update; the input is untouched
    result = train.train()                             # the whole run: (state, progress, summary)
    group = make_train(Config(), seeds=range(8))       # 8 runs as one vmapped program (kernel.many)

Runs with a folder on disk (config, checkpoints, telemetry, summary), as ``fkernel train`` makes
them: :func:`prepare` then :func:`execute`; data-parallel ranks join through
:func:`kernel.distributed.join`. Building blocks live in the submodules: ``optim``
(optax-style transforms), ``loss_scale`` (jmp-style), ``precision``, ``rng``, ``ppo``, ``rollout``.
"""
from kernel.config import Config
from kernel.evaluate import evaluate, load_policy
from kernel.precision import Precision
from kernel.runs import execute, prepare
from kernel.state import Progress, TrainState
from kernel.train import Trained, Trainer, make_train

__all__ = ["Config", "Precision", "Progress", "TrainState", "Trained", "Trainer", "evaluate", "execute",
           "load_policy", "make_train", "prepare"]
