"""Presets: named defaults for `harness run`, kept as YAML in `harness/presets/<name>.yaml` (data, not code).

A preset names the suite, the backbones, the recipe of each task, the in1k protocols, the seeds, where the data comes
from (`embedded`: the Fashion-MNIST sets tasks write themselves; `real`: `--data-root`), and optionally the backbones
whose weights it pretrains first. Flags given on the command line replace the preset's values. A path to a YAML file
of the same keys works wherever a preset name does (and lets tests point the suite at a dummy task).

Keys: description, data, suite, backbones, recipe (a name, or task -> name), protocols (task -> list), seeds,
controls (floor, pixels or none: `harness.controls`), tasks (extra task name -> "module:function"), pretrain {target,
recipe, epochs, overrides, backbones: name -> method};
the pretraining recipe may name the method as `{method}` (`{method}_tiny` -> `mae_tiny`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESET_DIR = Path(__file__).with_name("presets")
DEFAULT = "tiny"
_KEYS = {"description", "data", "suite", "backbones", "recipe", "protocols", "seeds", "tasks", "pretrain", "jobs",
         "controls"}
_PRETRAIN_KEYS = {"target", "recipe", "epochs", "overrides", "backbones"}


@dataclass
class Pretrain:
    """Backbones whose checkpoint the preset makes itself: `backbones` maps a registry name to a method."""

    backbones: dict[str, str]
    target: str = "harness.pretrain:pretrain"
    recipe: str | None = None
    epochs: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Preset:
    name: str
    description: str = ""
    data: str = "real"  # embedded | real
    suite: list[str] = field(default_factory=lambda: ["in1k", "coco", "ade20k"])
    backbones: list[str] = field(default_factory=list)
    recipe: dict[str, str] = field(default_factory=dict)  # task -> recipe name ("*" for every task)
    protocols: dict[str, list[str]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    tasks: dict[str, str] = field(default_factory=dict)
    pretrain: Pretrain | None = None
    jobs: int = 1  # runs at once on one machine (`harness run --jobs`)
    controls: tuple[str, ...] = ()  # control runs (`harness run --controls`): floor, pixels

    def recipe_for(self, task: str) -> str:
        return self.recipe.get(task, self.recipe.get("*", "tiny"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"--preset {name}: file does not exist")
        return path
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        from backbones.registry import unknown_name_error

        raise unknown_name_error("preset", name, list_presets())
    return path


def _as_list(value: Any, key: str, source: Path) -> list[Any]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ValueError(f"preset {source}: {key!r} must be a list")
    return value


def _controls(value: Any, path: Path) -> tuple[str, ...]:
    from harness.controls import parse_controls

    return parse_controls(value, f"preset {path}: controls")


def load_preset(name: str) -> Preset:
    """The preset of that name (or YAML path), validated; errors name the file and the key."""
    from backbones.yamlio import load_yaml_mapping

    path = preset_path(name)
    data = load_yaml_mapping(path, "preset", keys=_KEYS)
    if data.get("data", "real") not in ("embedded", "real"):
        raise ValueError(f"preset {path}: 'data' must be 'embedded' or 'real', not {data['data']!r}")
    recipe = data.get("recipe", "tiny")
    preset = Preset(
        name=path.stem,
        description=str(data.get("description", "")),
        data=data.get("data", "real"),
        suite=_as_list(data.get("suite", ["in1k", "coco", "ade20k"]), "suite", path),
        backbones=_as_list(data.get("backbones", []), "backbones", path),
        recipe={"*": recipe} if isinstance(recipe, str) else dict(recipe),
        protocols={k: _as_list(v, f"protocols.{k}", path) for k, v in (data.get("protocols") or {}).items()},
        seeds=[int(s) for s in _as_list(data.get("seeds", [0]), "seeds", path)],
        tasks=dict(data.get("tasks") or {}),
        jobs=data.get("jobs", 1),
        controls=_controls(data.get("controls"), path),
    )
    if not isinstance(preset.jobs, int) or isinstance(preset.jobs, bool) or preset.jobs < 1:
        raise ValueError(f"preset {path}: 'jobs' must be a whole number of at least 1, not {preset.jobs!r}")
    if data.get("pretrain"):
        pre = data["pretrain"]
        bad = sorted(set(pre) - _PRETRAIN_KEYS)
        if bad or not isinstance(pre.get("backbones"), dict):
            raise ValueError(
                f"preset {path}: 'pretrain' needs 'backbones' (name -> method) and only the keys "
                f"{', '.join(sorted(_PRETRAIN_KEYS))}"
                + (f"; unknown: {', '.join(bad)}" if bad else "")
            )
        preset.pretrain = Pretrain(
            backbones=dict(pre["backbones"]), target=pre.get("target", "harness.pretrain:pretrain"),
            recipe=pre.get("recipe"), epochs=pre.get("epochs"), overrides=dict(pre.get("overrides") or {}),
        )
    return preset
