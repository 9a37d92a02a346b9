"""`harness run --sweep pretrain.KEY=V1,V2,...`: the MAE paper's ablations over pretraining settings (He et al. 2021,
Figures 5 and 6 and Table 1: mask ratio, decoder depth, pretraining epochs) as ordinary runs.

Each preset pretraining whose recipe has KEY becomes one pretraining per value, with `KEY: value` added to its recipe
overrides (so each has its own run id); the transfers of that backbone run once per setting and load that setting's
encoder. A method whose recipe lacks KEY (MoCo v3 has no `model.mask_ratio`) keeps its one pretraining. Every value is
checked against the recipes (`tasks.recipes.apply_overrides`) while planning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.run.inputs import PlanError, split_list

FLAG = "--sweep"
PREFIX = "pretrain."


@dataclass(frozen=True)
class Sweep:
    key: str  # a dotted key of the pretraining recipes: model.mask_ratio, model.decoder_depth, epochs
    values: tuple[Any, ...]

    def setting(self, value: Any) -> dict[str, Any]:
        """What a run of this setting records (`pretrain_run['sweep']` of its transfers)."""
        return {"key": self.key, "value": value}


def parse_sweep(text: str | None) -> Sweep | None:
    """`pretrain.model.mask_ratio=0.5,0.75,0.9` -> Sweep('model.mask_ratio', (0.5, 0.75, 0.9)); values read as YAML
    scalars."""
    if not text:
        return None
    from tasks.recipes import parse_override

    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key.startswith(PREFIX) or len(key) == len(PREFIX):
        raise PlanError(f"{FLAG} {text!r} must look like pretrain.KEY=V1,V2,... e.g. "
                        "pretrain.model.mask_ratio=0.5,0.75,0.9")
    parsed = []
    for item in split_list(values):
        try:
            parsed.append(parse_override(f"{key}={item}")[1])
        except ValueError as e:
            raise PlanError(f"{FLAG} {key}: {e}") from None
    if not parsed:
        raise PlanError(f"{FLAG} {key}: no values (give V1,V2,...)")
    twice = sorted({str(v) for v in parsed if parsed.count(v) > 1})
    if twice:
        raise PlanError(f"{FLAG} {key}: value {', '.join(twice)} given twice")
    if any(isinstance(v, dict | list) or v is None for v in parsed):
        raise PlanError(f"{FLAG} {key}: values must be numbers, strings or booleans, got {values!r}")
    return Sweep(key=key.removeprefix(PREFIX), values=tuple(parsed))


def swept_methods(sweep: Sweep, recipes: dict[str, str | None], overrides: dict[str, Any]) -> set[str]:
    """The methods (method -> its pretraining recipe) whose recipe has the swept key; every value is checked against
    each of them. Raises naming the flag and key when a value does not fit or no recipe has the key."""
    from tasks.recipes import load_recipe

    methods = set()
    for method, recipe in sorted(recipes.items()):
        if recipe is None:
            continue
        for value in sweep.values:
            try:
                load_recipe("pretrain", recipe, {**overrides, sweep.key: value})
            except KeyError:
                break  # this method's recipe has no such key: its pretraining is not swept
            except ValueError as e:
                raise PlanError(f"{FLAG} pretrain.{sweep.key}: {e}") from None
        else:
            methods.add(method)
    if not methods:
        named = ", ".join(f"{m} ({r})" for m, r in sorted(recipes.items()) if r) or "none (no recipe)"
        raise PlanError(f"{FLAG} pretrain.{sweep.key}: no pretraining recipe of the preset has the key "
                        f"{sweep.key!r} (recipes: {named})")
    return methods
