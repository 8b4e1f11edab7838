"""Every stage of r1flow, one module each (a module may hold close variants, e.g. two GRPO stages).

`registry()` imports every module of this package and collects the `Stage` objects it defines:
nothing depends on who imported what first, so a Prefect worker that loads only the flow's
entrypoint sees every stage. Adding a stage = a module here, its test, and the flow line that
wires it.

A stage module imports torch, transformers and the components that use them inside its
functions, and takes its config class from a torch-free module (components/config.py,
components/training/configs.py, components/evaluation/tts_config.py): loading a recipe, its
errors, `r1flow stages` and an all-cached run never wait for torch (tests/tasks/test_recipe.py).
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from tasks.stage import Stage


@lru_cache(maxsize=None)
def _registry() -> tuple[tuple[str, Stage], ...]:
    found: dict[str, Stage] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Stage) and value.fn.__module__ == module.__name__:
                if value.name in found and found[value.name] is not value:
                    raise RuntimeError(f"stage {value.name!r} is defined twice")
                found[value.name] = value
    return tuple(found.items())


def registry() -> dict[str, Stage]:
    """name -> Stage for every stage module in tasks/stages/."""
    return dict(_registry())


def get_stage(name: str) -> Stage:
    stages = registry()
    if name not in stages:
        raise ValueError(f"unknown stage {name!r}; choose from {sorted(stages)}")
    return stages[name]
