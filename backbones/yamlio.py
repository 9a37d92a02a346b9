"""Reading the project's YAML files (backbone files, task recipes, presets): one loader whose errors name the file.

PyYAML reads YAML 1.1, where a float needs a dot: `4e-3` is the string '4e-3' to it but a number to every reader of
these files (YAML 1.2, JSON, Python), so `yaml11_float` reads such a string as the number it means.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

# a YAML 1.2 / Python float without a dot (`4e-3`, `1E5`), which YAML 1.1 leaves a string
_FLOAT_NO_DOT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def yaml11_float(value: Any) -> Any:
    """'4e-3' (a string to YAML 1.1, a number to every reader here) -> 0.004; any other value unchanged."""
    return float(value) if isinstance(value, str) and _FLOAT_NO_DOT.match(value) else value


def load_yaml_mapping(
    path: str | Path, what: str, keys: Collection[str] | None = None, allow_empty: bool = True
) -> dict[str, Any]:
    """The mapping a YAML file holds; an empty file is `{}` when `allow_empty`. `what` names the file in errors
    ('recipe', 'preset', 'backbone file'): a missing file, invalid YAML, a top level that is not a mapping, and keys
    outside `keys` (when given) each raise with the file's path and, for keys, what is allowed."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{what} {path} is not valid YAML: {e}") from e
    if data is None and allow_empty:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a mapping (key: value lines), not {type(data).__name__}")
    unknown = sorted(set(data) - set(keys)) if keys is not None else []
    if unknown:
        raise ValueError(
            f"{what} {path} has unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(sorted(keys))}"
        )
    return data
