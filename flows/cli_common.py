"""What every `r1flow` command shares: the recipe argument, `--set`, and one-line user errors."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

RecipeArg = typer.Argument(None, help="YAML recipe (default: configs/default.yaml).")
SetOpt = typer.Option(None, "--set", help="Override a recipe field: section.field=value (repeatable).")
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, RuntimeError)


def load(path: Optional[Path], overrides: Optional[List[str]]):
    """The validated recipe (configs/default.yaml when no path is given)."""
    from tasks.recipe import load_recipe

    return load_recipe(path or Path("configs/default.yaml"), overrides or [])


def load_checked(path: Optional[Path], overrides: Optional[List[str]], root: Path):
    """`load`, then the recipe's data section checked against the one its data version was built with."""
    from tasks.versioning import check_data_section

    cfg = load(path, overrides)
    check_data_section(root, cfg.data, str(path or Path("configs/default.yaml")))
    return cfg


def fail(err: BaseException) -> None:
    typer.secho(f"error: {err}", fg="red", err=True)
    raise typer.Exit(2)
