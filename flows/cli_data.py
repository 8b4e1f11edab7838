"""`r1flow data …`: the curated data of a recipe (`data.dir`, versioned by DVC in `<data.dir>.dvc`).

`ensure` never changes the recorded version: it pulls the folder, or rebuilds it in a temporary
folder and moves it into place only if its md5 is the one recorded; otherwise it exits 2 with
the command that would record a new version, leaving the `.dvc` file and the folder untouched.
`generate` is the command that records a new version.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import List, Optional

import typer

from flows.cli_common import USER_ERRORS, RecipeArg, SetOpt, fail, load
from tasks.settings import configure

data_app = typer.Typer(no_args_is_help=True, help="The curated data of a recipe (data.dir), versioned by DVC.")


@data_app.command("generate")
def data_generate(recipe: Optional[Path] = RecipeArg, set_: Optional[List[str]] = SetOpt,
                  push: bool = typer.Option(True, help="Push the new version to the DVC remote.")) -> None:
    """(Re)build the recipe's curated data, record it as a new version (`dvc add`) and push it."""
    root = configure()
    try:
        from components.data.curate import build
        from tasks.versioning import dvc, read_dvc_file, record_data_section

        cfg = load(recipe, set_)
        counts = build(cfg.data, root / cfg.data.dir)
        dvc(root, "add", cfg.data.dir)
        record_data_section(root, cfg.data)  # what `run` checks a recipe's data section against
        if push:
            dvc(root, "push", f"{cfg.data.dir}.dvc")
        typer.echo(json.dumps({"md5": read_dvc_file(root, cfg.data.dir)[1], "rows": counts}, indent=2))
    except USER_ERRORS as e:
        fail(e)


@data_app.command("ensure")
def data_ensure(recipe: Optional[Path] = RecipeArg, set_: Optional[List[str]] = SetOpt) -> None:
    """Make the recipe's data folder match its .dvc file: pull it, or rebuild it and check the md5."""
    root = configure()
    try:
        from tasks.versioning import DataVersionError, check_data_section, data_version, dir_md5, dvc, read_dvc_file

        cfg = load(recipe, set_)
        check_data_section(root, cfg.data, str(recipe or Path("configs/default.yaml")))
        folder = cfg.data.dir
        _, wanted = read_dvc_file(root, folder)
        target = root / folder
        if not target.exists():
            with contextlib.suppress(DataVersionError):
                dvc(root, "pull", f"{folder}.dvc")
        if not target.exists():
            _rebuild(cfg, target, wanted, recipe or Path("configs/default.yaml"))
        elif dir_md5(target) != wanted:
            raise DataVersionError(f"{target}: differs from {folder}.dvc; run `dvc add {folder}` to record it as a "
                                   f"new version, or `dvc checkout {folder}.dvc` to restore the recorded one")
        dvc(root, "add", folder)  # fills the DVC cache; the .dvc file keeps its md5
        with contextlib.suppress(DataVersionError):
            dvc(root, "push", f"{folder}.dvc")
        ref = data_version(root, folder)
        typer.echo(f"data version {ref.md5} ({len(ref.files)} files in {folder}/)")
    except USER_ERRORS as e:
        fail(e)


def _rebuild(cfg, target: Path, wanted: str, recipe: Path) -> None:
    """Build the recipe's data beside `target` and move it in only if its md5 is `wanted`."""
    from components.data.curate import build
    from tasks.versioning import DataVersionError, dir_md5

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.build-") as tmp:
        built = Path(tmp) / target.name
        build(cfg.data, built)
        got = dir_md5(built)
        if got != wanted:
            raise DataVersionError(
                f"{recipe}: its data section builds version {got}, but {target.name}.dvc records {wanted}; nothing "
                f"was changed. To record this recipe's data as the new version of {target.name}/, run `r1flow data "
                f"generate {recipe}` (and commit {target.name}.dvc); to keep both versions, set data.dir in the recipe to "
                "a new folder and run that command")
        os.replace(built, target)


@data_app.command("status")
def data_status(recipe: Optional[Path] = typer.Argument(None, help="Recipe whose data.dir to check (default: data).")
                ) -> None:
    """Print the data version and whether the folder matches it."""
    root = configure()
    try:
        from tasks.versioning import DataVersionError, data_version, read_dvc_file

        folder = load(recipe, []).data.dir if recipe else "data"
        out, _ = read_dvc_file(root, folder)
        if not (root / out).is_dir():  # a status changes nothing: no pull
            raise DataVersionError(f"{root / out}: missing; `r1flow data ensure {recipe or 'configs/default.yaml'}` "
                                   "pulls or rebuilds it")
        ref = data_version(root, folder)
        typer.echo(json.dumps({"md5": ref.md5, "files": ref.files}, indent=2))
    except USER_ERRORS as e:
        fail(e)


@data_app.command("push")
def data_push(recipe: Optional[Path] = RecipeArg) -> None:
    """Upload the recipe's data version to the DVC remote (`dvc push <data.dir>.dvc`)."""
    _dvc_transfer("push", recipe)


@data_app.command("pull")
def data_pull(recipe: Optional[Path] = RecipeArg) -> None:
    """Download the recipe's data version from the DVC remote (`dvc pull <data.dir>.dvc`) and check it."""
    _dvc_transfer("pull", recipe)


def _dvc_transfer(verb: str, recipe: Optional[Path]) -> None:
    root = configure()
    try:
        from tasks.versioning import data_version, dvc

        folder = load(recipe, []).data.dir
        dvc(root, verb, f"{folder}.dvc")
        ref = data_version(root, folder)
        typer.echo(f"{verb}ed data version {ref.md5} ({folder}/)")
    except USER_ERRORS as e:
        fail(e)
