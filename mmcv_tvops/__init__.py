"""mmcv's compiled-ops module `mmcv._ext`, served from torchvision's kernels where no compiled mmcv is installed.

mmcv 2.1.0's Python ops (`mmcv/ops/*.py`, the same code in the `mmcv` wheel with compiled ops and in the pure-Python
`mmcv-lite`) each call `mmcv.utils.ext_loader.load_ext('_ext', names)`, which imports `mmcv._ext` and asserts that
every listed name exists; mmdet 3.3 and mmseg 1.2 import `mmcv.ops` names when they are imported. `install()` appends
a finder to `sys.meta_path` that answers `import mmcv._ext` with `mmcv_tvops.ext` (torchvision's `nms` and
`roi_align`, the ops this project's Mask R-CNN and UperNet recipes reach; every other name raises when called). It is
consulted after Python's path finder, so a compiled `mmcv/_ext*.so` is always found first and used.

The finder is installed in every process of the project's venv by `mmcv_tvops.pth` (written into site-packages by
`scripts/setup_env.sh`), and again by `backbones.mm.compat` on import, so an install without the `.pth` works for this
project's own code. Nothing here imports torch: the `.pth` runs at every interpreter start.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from types import ModuleType

EXT = "mmcv._ext"
TORCHVISION = "torchvision"
COMPILED = "compiled"
_MARK = "__mmcv_tvops__"  # set on the module this package serves as mmcv._ext


class _ExtLoader:  # importlib's Loader protocol (not importlib.abc: the .pth keeps start-up light)
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module object, filled by exec_module

    def exec_module(self, module: ModuleType) -> None:
        from mmcv_tvops import ext  # torch and torchvision are imported only here

        module.__dict__.update({name: getattr(ext, name) for name in ext.__all__})
        module.__doc__ = ext.__doc__
        setattr(module, _MARK, True)


class ExtFinder:  # importlib's MetaPathFinder protocol
    """Finds `mmcv._ext` (and nothing else) when the finders before it in `sys.meta_path` did not."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != EXT:
            return None
        return importlib.util.spec_from_loader(fullname, _ExtLoader(), origin="mmcv_tvops.ext")


def install() -> None:
    """Appends the finder to `sys.meta_path` once per process (idempotent)."""
    if not any(isinstance(f, ExtFinder) for f in sys.meta_path):
        sys.meta_path.append(ExtFinder())


def backend() -> str | None:
    """Which ops `import mmcv._ext` gives in this process: 'compiled', 'torchvision', or None without mmcv.

    Read without importing mmcv or torch when `mmcv._ext` is not imported yet: a compiled `_ext` beside mmcv's files
    wins, else this package serves it (once `install()` ran)."""
    loaded = sys.modules.get(EXT)
    if loaded is not None:
        return TORCHVISION if getattr(loaded, _MARK, False) else COMPILED
    spec = importlib.util.find_spec("mmcv")
    if spec is None or spec.submodule_search_locations is None:
        return None
    found = importlib.machinery.PathFinder.find_spec(EXT, list(spec.submodule_search_locations))
    return COMPILED if found is not None else TORCHVISION
