"""Recipe overrides: null where the task reads null, and nowhere else."""

from __future__ import annotations

import pytest

from tasks.recipes import load_recipe, nullable_keys


def test_null_replaces_a_value_only_where_some_recipe_of_the_task_writes_null() -> None:
    assert "model.patch_size" in nullable_keys("coco")  # tiny.yaml: the backbone's own patch size
    assert load_recipe("coco", "paper", {"model.patch_size": None})["model"]["patch_size"] is None
    with pytest.raises(ValueError, match=r"optim\.lr=None.*a finite number >= 0"):
        load_recipe("coco", "paper", {"optim.lr": None})
