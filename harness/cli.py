"""Command line: `python -m harness <command>` (or the `harness` console script).

Each command lives in its own module, named here as a string and imported only when that command runs, so that
`--help` and `backbones` answer without loading mmdet or mmseg. A command module provides
`configure(parser)` and `run(args) -> int` (the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("harness.run", "run a suite of transfer tasks for a set of backbones, then write the report"),
    "report": ("harness.report", "read the result records and write the tables and plots"),
    "pretrain": ("harness.pretrain.cli", "pretrain a ViT with MAE, or a supervised / MoCo v3 baseline"),
    "data": ("harness.data.cli", "write the embedded data sets (ImageNet, COCO and ADE20K layouts)"),
    "backbones": ("harness.commands.backbones", "list the registered backbones"),
    "download": ("harness.commands.download", "download registered backbones' weights into the cache, hash checked"),
}


def version() -> str:
    """`harness X.Y.Z (git <commit>[, modified])`: the package's version and, in a git checkout, its commit."""
    from harness import __version__, provenance

    git = provenance.git_info()
    commit = git.get("commit")
    return f"harness {__version__}" + (f" (git {commit[:12]}{', modified' if git.get('dirty') else ''})" if commit
                                       else "")


class _Version(argparse.Action):
    """`--version`, worked out only when asked for: it runs git, which every other command can do without."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(version())
        parser.exit()


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the options of the command named in `argv` (default: the command line's) only."""
    parser = argparse.ArgumentParser(prog="harness", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version (and git commit) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # only the chosen command's module is imported to add its options
            importlib.import_module(module).configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line `argv` (default: `sys.argv[1:]`, which is left as it is) run; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
