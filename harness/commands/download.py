"""`harness download NAME [NAME ...]`: puts registry entries' published weights in the cache, hash checked.

Built-in entries carry the sha256 their publisher gives (full or a torch.hub prefix); for the others the user passes
one (`--sha256`) or accepts the file as served (`--accept-sha256`, which records its digest beside the file). `timm:`
names download through timm's own pretrained machinery (the Hugging Face hub cache).
"""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME", help="registered backbones (or timm:<model>.<tag>)")
    parser.add_argument("--sha256", help="the expected sha256 (hex, or its first 8+ digits), for one NAME")
    parser.add_argument("--accept-sha256", action="store_true",
                        help="for entries without a published hash: keep the file as served and record its sha256")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--backbone-module", action="append", default=[], help="import a module that registers more")
    parser.add_argument("--backbone-file", action="append", default=[], help="register the backbone a YAML file names")


def _timm(name: str) -> str:
    import timm

    from backbones.registry import get_spec

    arch = get_spec(name).arch
    timm.create_model(arch, pretrained=True)
    return f"{name}: in timm's cache (Hugging Face hub), loaded through timm"


def fetch_one(name: str, sha256: str | None, accept: bool, progress: bool) -> str:
    """Downloads one entry's weights; returns what was done. Raises KeyError, ValueError or WeightsError."""
    from backbones.registry import TIMM_PREFIX, get_spec
    from backbones.weights import download_weights

    if name.startswith(TIMM_PREFIX):
        return _timm(name)
    spec = get_spec(name)
    if spec.checkpoint:
        raise ValueError(f"{name}: its weights are the local file {spec.checkpoint}; there is nothing to download")
    if not spec.url:
        raise ValueError(f"{name}: it has no published weights; pass --checkpoint {name}=PATH to runs "
                         f"(`harness pretrain` makes one)")
    _, message = download_weights(name, spec.url, spec.sha256, given=sha256, accept=accept, progress=progress)
    return message


def run(args: argparse.Namespace) -> int:
    from backbones.registry import get_spec, load_backbone_module, load_backbone_yaml
    from backbones.weights import WeightsError

    if args.sha256 and len(args.names) > 1:
        print("error: --sha256 checks one file; give one NAME with it", file=sys.stderr)
        return 2
    for module in args.backbone_module:
        load_backbone_module(module)
    for path in args.backbone_file:
        load_backbone_yaml(path)
    try:  # every name is checked before anything is downloaded
        for name in args.names:
            get_spec(name)
    except (KeyError, ValueError) as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    failed = 0
    for name in args.names:
        try:
            print(fetch_one(name, args.sha256, args.accept_sha256, progress=not args.no_progress))
        except (KeyError, ValueError, WeightsError) as e:
            print(f"error: {e.args[0]}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0
