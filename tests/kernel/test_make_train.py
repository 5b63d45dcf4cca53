"""The README's first Python API example, run as written: it trains CartPole to a mean return of 500."""
import re
from pathlib import Path

import torch

from kernel.evaluate import evaluate

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_make_train_example_solves_cartpole(capsys):
    scope = {}
    exec(compile(readme_example(), str(README), "exec"), scope)
    result = scope["result"]
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == result.progress.update + 1  # one line per update, then the mean return
    assert result.summary["mean_return"] >= 475 and result.summary["first_solved"] is not None
    returns = evaluate(scope["train"].built.config, scope["params"], episodes=100)
    assert torch.all(returns == 500), returns
