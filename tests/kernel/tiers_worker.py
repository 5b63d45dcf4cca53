"""One rank of test_tiers' data-parallel run (started by torchrun): a tiered run, its eager updates
slowed while rank 0's helper compiles and the ranks trace, then the replay of the switch update it
took; each rank saves both results and its summary."""
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from kernel import distributed, plan
from kernel import train as T
from kernel.tree import flatten_with_paths

sys.path.insert(0, str(Path(__file__).parent))
from test_tiers import RANKED  # noqa: E402

out = Path(sys.argv[1])
world = distributed.join("cpu")
torch.set_num_threads(1)
if world.rank == 0:  # (a helper may have compiled this config into the cache before)
    plan.helper_mark(RANKED, False, None, world.size).unlink(missing_ok=True)


def slowed(log):
    if log.tier and log.tier.startswith("eager; compiling"):
        time.sleep(1.0)


tiered = T.make_train(RANKED, world=world).train(on_update=slowed)
switch = tiered.summary["switch_update"]
replay = T.make_train(RANKED.replace(compile_from_update=switch), world=world).train()
save_file(flatten_with_paths({"tiered": tiered.state.params, "replay": replay.state.params}),
          out / f"rank-{world.rank}.st")
(out / f"summary-{world.rank}.json").write_text(json.dumps({k: tiered.summary[k] for k in (
    "switch_update", "switch_check", "tiers")}))
distributed.leave()
