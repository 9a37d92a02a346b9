"""`harness backbones`: the registry as a table (name, architecture, parameters, format, licence, weights on disk).

Parameter counts come from the specs (the zoo's `params` column), so the table needs neither torch nor timm; entries
that do not state theirs (a user's YAML file) are counted on the meta device only with `--params`.
"""

from __future__ import annotations

import argparse
import os

from backbones.registry import BackboneSpec


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="shell pattern on names, e.g. 'mae_*'")
    parser.add_argument("--params", action="store_true", help="count the parameters of entries that do not state them")
    parser.add_argument("--backbone-module", action="append", default=[], help="import a module that registers more")
    parser.add_argument("--backbone-file", action="append", default=[], help="register the backbone a YAML file names")


def _count(spec: BackboneSpec) -> int:
    import torch

    from backbones.checkpoint import build_model

    with torch.device("meta"):
        return sum(p.numel() for p in build_model(spec).parameters())


def weights_state(spec: BackboneSpec) -> str:
    """Where the weights are: on disk (and where), to download, or made by the project's own pretraining."""
    from backbones.weights import cached_path, expected_hash

    if spec.checkpoint:
        return "on disk" if os.path.isfile(spec.checkpoint) else f"missing ({spec.checkpoint})"
    if spec.url:
        path = cached_path(spec.url)
        if not path.is_file():
            return "not downloaded"
        return "on disk" if expected_hash(path, spec.sha256) else "on disk, sha256 unchecked"
    if spec.timm_pretrained:
        return "through timm"
    return "none (test entry)" if spec.name.startswith("test_") else "from `harness pretrain`"


def rows(pattern: str = "*", count: bool = False) -> list[dict[str, str]]:
    from backbones.registry import get_spec, list_backbones

    out = []
    for name in list_backbones(pattern):
        spec = get_spec(name)
        n = spec.params if spec.params is not None else (_count(spec) if count else None)
        out.append(
            {"name": name, "arch": spec.arch, "params": f"{n / 1e6:.1f}M" if n is not None else "?",
             "format": spec.checkpoint_format, "sha256": _hash_state(spec), "licence": spec.license,
             "weights": weights_state(spec)}
        )  # fmt: skip
    return out


def _hash_state(spec: BackboneSpec) -> str:
    if not spec.url and not spec.sha256:  # a shipped file (the tiny encoders) is pinned like a download
        return "-"
    if not spec.sha256:
        return "none published"
    return "pinned" if len(spec.sha256) == 64 else f"prefix {spec.sha256}"


def footer(table: list[dict[str, str]]) -> list[str]:
    lines = []
    if any(r["weights"] == "not downloaded" for r in table):
        lines.append("not downloaded: `harness download NAME` (entries without a published sha256 need --sha256 HEX "
                     "or --accept-sha256), or give a file to a run with --checkpoint NAME=PATH")
    if any(r["params"] == "?" for r in table):
        lines.append("params ?: the entry does not state its size; --params counts it (imports torch and timm)")
    lines.append("timm:<model>.<tag> names any timm ViT with pretrained weights (loaded through timm)")
    return lines


def run(args: argparse.Namespace) -> int:
    from backbones.registry import load_backbone_module, load_backbone_yaml

    for module in args.backbone_module:
        load_backbone_module(module)
    for path in args.backbone_file:
        load_backbone_yaml(path)
    table = rows(args.pattern, count=args.params)
    if not table:
        print(f"no backbone matches {args.pattern!r}")
        return 1
    cols = list(table[0])
    width = {c: max(len(c), *(len(r[c]) for r in table)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols).rstrip())
    print("  ".join("-" * width[c] for c in cols))
    for r in table:
        print("  ".join(r[c].ljust(width[c]) for c in cols).rstrip())
    print()
    print("\n".join(footer(table)))
    return 0
