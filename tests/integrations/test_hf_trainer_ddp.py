"""conopt.integrations.hf under the real ``transformers.Trainer`` on 2 CPU processes (gloo).

The run is ``hf_qp.ddp_trainer`` (the QP of ``lightning_qp.py``, float64, sequential batches of
items that differ), launched by ``torch.distributed.run`` through ``hf_ddp_run.py``.
"""

from pathlib import Path

import torch
from hf_qp import ddp_trainer, multipliers
from two_processes import run_on_two_processes

torch.set_num_threads(1)
HERE = Path(__file__).parent
STEPS = 12  # 6 epochs of 2 global batches of 16 items


def test_two_processes_keep_identical_multipliers_equal_to_one_process(tmp_path):
    """The ranks agree to the bit, and match 1 process on the same global batches of 16."""
    run_on_two_processes(HERE / "hf_ddp_run.py", str(tmp_path), str(STEPS))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["steps"] == STEPS
    assert ranks[0]["distributed_type"] == "DistributedType.MULTI_CPU"
    assert ranks[0]["ddp_wrapped"] == "DistributedDataParallel"
    assert ranks[0]["multipliers"].dtype == torch.float64
    assert torch.equal(ranks[0]["multipliers"], ranks[1]["multipliers"])
    assert torch.equal(ranks[0]["x"], ranks[1]["x"])
    assert torch.equal(ranks[0]["history"], ranks[1]["history"])
    for name, value in ranks[0]["values"].items():
        assert torch.equal(value, ranks[1]["values"][name])

    single, history = ddp_trainer(tmp_path / "single", steps=STEPS, per_device_batch=16)
    single.train()
    assert single.last_report.step == STEPS
    history = torch.stack(history)
    budget = history[:, 0]
    # The run projects (budget clamped at 0), activates both constraints, then restarts budget.
    assert budget[0] == 0 and budget.max() > 0.5 and budget[-1] == 0
    assert history[:, 1].abs().max() > 0.5
    torch.testing.assert_close(ranks[0]["history"], history, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        ranks[0]["multipliers"], multipliers(single.problem), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(ranks[0]["x"], single.model.x.detach(), atol=1e-6, rtol=0)
    for name, entry in single.last_report.constraints.items():
        torch.testing.assert_close(ranks[0]["values"][name], entry.strict_value, atol=1e-6, rtol=0)
