"""`harness backbones`: the registry as a table (name, architecture, parameters, format, licence, local weights)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="shell pattern on names, e.g. 'mae_*'")
    parser.add_argument("--backbone-module", action="append", default=[], help="import a module that registers more")
    parser.add_argument("--backbone-file", action="append", default=[], help="register the backbone a YAML file names")


def rows(pattern: str = "*") -> list[dict[str, str]]:
    """One row per backbone. Parameters are counted on the meta device, so nothing is allocated."""
    import torch

    from backbones.checkpoint import build_model, cached_path
    from backbones.registry import get_spec, list_backbones

    out = []
    for name in list_backbones(pattern):
        spec = get_spec(name)
        with torch.device("meta"):
            n = sum(p.numel() for p in build_model(spec).parameters())
        if spec.checkpoint:
            local = "yes" if __import__("os").path.isfile(spec.checkpoint) else "missing"
        elif spec.url:
            local = "yes" if cached_path(spec.url).is_file() else "no (downloads)"
        else:
            local = "none (test entry)" if name.startswith("test_") else "from `harness pretrain`"
        out.append(
            {"name": name, "arch": spec.arch, "params": f"{n / 1e6:.1f}M", "format": spec.checkpoint_format,
             "licence": spec.license, "weights": local}
        )
    return out


def run(args: argparse.Namespace) -> int:
    from backbones.registry import load_backbone_module, load_backbone_yaml

    for module in args.backbone_module:
        load_backbone_module(module)
    for path in args.backbone_file:
        load_backbone_yaml(path)
    table = rows(args.pattern)
    if not table:
        print(f"no backbone matches {args.pattern!r}")
        return 1
    cols = list(table[0])
    width = {c: max(len(c), *(len(r[c]) for r in table)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols))
    print("  ".join("-" * width[c] for c in cols))
    for r in table:
        print("  ".join(r[c].ljust(width[c]) for c in cols))
    return 0
