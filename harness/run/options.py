"""The flags of `harness run`, read once into a typed, frozen `RunOptions` that every step of the command takes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields


def configure(parser: argparse.ArgumentParser) -> None:
    from harness.presets import DEFAULT

    parser.add_argument("--suite", help="comma-separated tasks: in1k, coco, ade20k, a task spec my_task.yaml, or "
                        "NAME=module:function")
    parser.add_argument("--backbones", help="comma-separated registry names or backbone YAML files")
    parser.add_argument("--preset", default=DEFAULT, help=f"tiny | paper | short | a preset YAML (default {DEFAULT})")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    parser.add_argument("--protocols", help="in1k protocols: finetune,linprobe,partial (default: the preset's)")
    parser.add_argument("--controls", help="control runs: floor,pixels or none (default: the preset's): a random "
                        "frozen encoder per architecture, a linear classifier on pixels (harness.controls)")
    parser.add_argument("--recipe", action="append", default=[], metavar="[TASK=]NAME",
                        help="recipe of every task, or of one task (repeatable; default: the preset's)")
    parser.add_argument("--pretrain-epochs", type=int, help="epochs of the preset's pretrainings (default: recipe's)")
    parser.add_argument("--sweep", action="append", default=[], metavar="pretrain.KEY=V1,V2,...",
                        help="one pretraining (and its transfers) per value of a pretraining recipe key, e.g. "
                        "pretrain.model.mask_ratio=0.5,0.75,0.9, for the methods whose recipe has the key")
    parser.add_argument("--data-root", help="DIR holding imagenet/, coco/, ade20k/, or TASK=DIR,TASK=DIR")
    parser.add_argument("--out", default="runs/default", help="output folder (work/, logs/, records/, results/)")
    parser.add_argument("--launcher", choices=("local", "torchrun", "slurm"), default="local")
    parser.add_argument("--gpus", type=int, default=1, help="processes (GPUs) per run under torchrun / slurm")
    parser.add_argument("--jobs", type=int, help="runs at once on this machine, each with its share of the CPU "
                        "threads or its own GPUs (default: the preset's, else 1)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes per run under slurm")
    parser.add_argument("--slurm-partition", help="Slurm partition")
    parser.add_argument("--slurm-time", type=int, default=72 * 60, help="Slurm time limit per run, minutes")
    parser.add_argument("--slurm-cluster", choices=("slurm", "local", "debug"), default="slurm",
                        help="submitit executor: slurm, or local / debug to try the slurm path on this machine")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (ids, done or not) and stop")
    parser.add_argument("--force", action="store_true", help="re-run finished runs from scratch")
    parser.add_argument("--backbone-module", action="append", default=[], help="import a module that registers more")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="weights for a backbone, replacing the registry's or the preset's pretraining")
    parser.add_argument("--set", action="append", default=[], metavar="TASK.KEY=VALUE", dest="overrides",
                        help="recipe override for one task, e.g. in1k.optim.lr=1e-3 (value read as YAML)")
    parser.add_argument("--trust-checkpoint", action="store_true", help="allow pickled checkpoints (runs their code)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda")
    parser.add_argument("--log-backend", choices=("tensorboard", "wandb"),
                        help="also log to TensorBoard / W&B (tasks read HARNESS_LOG_BACKEND)")
    parser.add_argument("--report-format", default="md,csv,tex", help="formats of the closing report")
    parser.add_argument("--no-report", action="store_true", help="skip the closing report")


@dataclass(frozen=True)
class RunOptions:
    """`harness run`'s flags as given (`configure` documents each); the plan resolves them against the preset."""

    suite: str | None = None
    backbones: str | None = None
    preset: str = "tiny"  # harness.presets.DEFAULT
    seeds: str | None = None
    protocols: str | None = None
    controls: str | None = None  # floor,pixels | none (None: the preset's)
    recipe: tuple[str, ...] = ()
    pretrain_epochs: int | None = None
    sweep: tuple[str, ...] = ()  # one key for now (`harness.run.sweep`)
    data_root: str | None = None
    out: str = "runs/default"
    launcher: str = "local"  # local | torchrun | slurm
    gpus: int = 1
    jobs: int | None = None
    nodes: int = 1
    slurm_partition: str | None = None
    slurm_time: int = 72 * 60
    slurm_cluster: str = "slurm"  # slurm | local | debug
    dry_run: bool = False
    force: bool = False
    backbone_module: tuple[str, ...] = ()
    checkpoint: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    trust_checkpoint: bool = False
    device: str = "auto"
    log_backend: str | None = None
    report_format: str = "md,csv,tex"
    no_report: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        """The options of a parsed command line (`configure`'s flags); lists become tuples."""
        values = {}
        for f in fields(cls):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)
