"""Two-process DDP on CPU (gloo) trains as one process with the doubled batch: same samples per step, averaged grads.

No mixup, drop path or random crops, so that both runs are deterministic; the tolerance covers the order of float
sums in the all-reduce.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from embedded import imagenet
from tasks import TaskContext
from tasks import classification as cls

ROOT = Path(__file__).resolve().parents[1]

OVERRIDES = {
    "data.micro_batch_size": 16, "finetune.epochs": 2, "finetune.batch_size": 16, "finetune.warmup_epochs": 1,
    "finetune.drop_path": 0.0, "finetune.aug.scale": None, "finetune.aug.hflip": 0.0,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, work: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    ctx = TaskContext(backbone="test_vit", work_dir=Path(work), data_root=Path(data), protocol="finetune",
                      overrides=OVERRIDES, launcher="pytorch")
    result = cls.run(ctx)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"metrics": result.metrics, "recipe": result.recipe,
                                                         "num_val": result.extra["num_val"]}))


def _weights(work: Path) -> dict[str, torch.Tensor]:
    return torch.load(work / cls.CHECKPOINT, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_doubled_batch(tmp_path: Path) -> None:
    data = imagenet.write(tmp_path / "data", n_train_per_class=8, n_val_per_class=4)  # 80 train, 40 val
    single = cls.run(TaskContext(backbone="test_vit", work_dir=tmp_path / "single", data_root=data,
                                 protocol="finetune", overrides=OVERRIDES))

    mp.spawn(_worker, args=(2, _free_port(), str(data), str(tmp_path / "ddp"), str(tmp_path)), nprocs=2, join=True)
    ranks: list[dict[str, Any]] = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    assert ranks[0]["recipe"]["derived"]["world_size"] == 2 and ranks[0]["recipe"]["derived"]["micro_batch_size"] == 8
    assert ranks[0]["metrics"] == ranks[1]["metrics"]  # eval counts all-reduced: every rank reports the whole val set
    assert ranks[0]["num_val"] == 40
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
    assert abs(ranks[0]["metrics"]["top1"] - single.metrics["top1"]) <= 100 / 40  # at most one image apart
