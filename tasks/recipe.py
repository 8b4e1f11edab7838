"""The `Recipe`: run, data and model sections, plus one typed section per registered stage.

Assembled from the stage registry (`tasks/stages/`), so adding a stage adds its section here
without touching this file. `load_recipe(path, overrides)` is THE validation of a recipe: the
CLI calls it once, and every later layer receives typed objects (a stage receives its section).
"""
from __future__ import annotations

import difflib
from pathlib import Path

from pydantic import Field, create_model, field_validator, model_validator

from components.config import DataConfig, ModelConfig, RecipeError, RunConfig, Section, load_tree, validate
from tasks.runners import RunnerConfig
from tasks.stages import registry


class RecipeBase(Section):
    run: RunConfig = Field(default_factory=RunConfig, description="What to run and where it is recorded.")
    data: DataConfig = Field(default_factory=DataConfig, description="The curated data (data.dir, versioned by DVC "
                             "in <data.dir>.dvc).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The starting model.")
    runner: RunnerConfig = Field(default_factory=RunnerConfig, description="How evaluations of several models fan "
                                 "out (a Prefect task runner: sequential, threads, dask or ray).")

    @field_validator("run")
    @classmethod
    def _known_stages(cls, run: RunConfig) -> RunConfig:
        known = sorted(registry())
        for stage in run.stages:
            if stage not in known:
                close = difflib.get_close_matches(stage, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"unknown stage {stage!r} in run.stages; {hint}choose from {known}")
        return run

    @model_validator(mode="after")
    def _consistent(self):
        if "base" not in self.run.stages and not self.model.name_or_path:
            raise ValueError("run.stages has no 'base' and model.name_or_path is empty: nothing to start from")
        if getattr(self, "alignment", None) is not None and self.alignment.compare and not self.evaluate.house_rules:
            raise ValueError("alignment.compare compares the methods' true preference rates, which need "
                             "evaluate.house_rules: true")
        return self

    def section(self, name: str) -> Section:
        """The typed config section of stage `name`."""
        return getattr(self, name)


def _build() -> type[RecipeBase]:
    fields = {name: (spec.config, Field(default_factory=spec.default_config, description=spec.doc))
              for name, spec in registry().items()}
    return create_model("Recipe", __base__=RecipeBase, __module__=__name__, **fields)


Recipe = _build()


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> RecipeBase:
    """Load a YAML recipe (or the defaults when `path` is None) with `--set` overrides, validated."""
    tree, source = load_tree(path, overrides)
    return validate(Recipe, tree, source)


def load_recipe_or_exit(path: str | Path | None = None, overrides: list[str] | None = None) -> RecipeBase:
    """`load_recipe` for scripts (bench/): a bad recipe or override exits with its message, no traceback."""
    try:
        return load_recipe(path, overrides)
    except RecipeError as e:
        raise SystemExit(str(e)) from None
