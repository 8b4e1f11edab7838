"""`r1flow data …` on a fresh clone: the committed data versions are rebuilt, never rewritten.

The tiny recipe has its own data version (data-tiny/, data-tiny.dvc), so trying it on a fresh
clone does not touch data.dvc; a recipe whose `data:` section cannot produce the recorded
version exits 2 with the command to run, and leaves the .dvc file and the folder as they were.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.versioning import dir_md5, read_dvc_file

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture()
def clone(tmp_path, monkeypatch):
    """What `git clone` gives: configs, the .dvc files and DVC's config, no data, no cache, no remote."""
    for name in ("configs", ".dvc/config", ".dvcignore", "data.dvc", "data-tiny.dvc"):
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, target)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of the project but git's and DVC's own internals (.git/, .dvc/)."""
    files = (p.relative_to(folder) for p in sorted(folder.rglob("*")) if p.is_file())
    return {str(f): (folder / f).read_bytes() for f in files if f.parts[0] not in (".git", ".dvc")}


@pytest.mark.parametrize("recipe, folder", [("tiny", "data-tiny"), ("default", "data"), ("accurate", "data-weighted")])
def test_the_generator_reproduces_a_committed_data_version(tmp_path, recipe, folder):
    from components.data.curate import build
    from tasks.recipe import load_recipe

    build(load_recipe(REPO / f"configs/{recipe}.yaml").data, tmp_path / folder)
    assert dir_md5(tmp_path / folder) == read_dvc_file(REPO, folder)[1]  # what `dvc add` records


def test_ensure_on_a_fresh_clone_rebuilds_the_tiny_data_without_changing_any_version(clone):
    before = {name: (clone / name).read_bytes() for name in ("data.dvc", "data-tiny.dvc")}
    result = runner.invoke(app, ["data", "ensure", "configs/tiny.yaml"])
    assert result.exit_code == 0, result.output
    assert f"data version {read_dvc_file(clone, 'data-tiny')[1].removesuffix('.dir')}" in result.output
    assert {name: (clone / name).read_bytes() for name in before} == before
    assert not (clone / "data").exists(), "the default recipe's data is not touched"
    # ...and pushed: a second clone sharing the remote pulls it instead of rebuilding
    shutil.rmtree(clone / "data-tiny")
    result = runner.invoke(app, ["data", "pull", "configs/tiny.yaml"])
    assert result.exit_code == 0 and "pulled data version" in result.output, result.output
    assert dir_md5(clone / "data-tiny") == read_dvc_file(clone, "data-tiny")[1]


def test_a_recipe_whose_data_section_differs_from_its_version_exits_2_saying_what_to_run_and_changes_nothing(clone):
    before = snapshot(clone)
    for command in (["data", "ensure"], ["run"]):  # before any server starts or data is built
        result = runner.invoke(app, [*command, "configs/tiny.yaml", "--set", "data.n_eval=25"])
        assert result.exit_code == 2, result.output
        assert "the recipe asks for data.n_eval=25, but data-tiny/ was built with 24" in result.output
        assert "run `r1flow data generate configs/tiny.yaml`" in result.output
        assert snapshot(clone) == before
    # a version recorded without its section (or a generator that changed since): rebuilt, compared, refused
    dvc_file = clone / "data-tiny.dvc"
    dvc_file.write_text(dvc_file.read_text().split("meta:")[0])
    before = snapshot(clone)
    result = runner.invoke(app, ["data", "ensure", "configs/tiny.yaml", "--set", "data.n_eval=25"])
    assert result.exit_code == 2
    assert "data-tiny.dvc records" in result.output and "nothing was changed" in result.output
    assert "run `r1flow data generate configs/tiny.yaml`" in result.output
    assert snapshot(clone) == before
    assert not [p for p in clone.iterdir() if p.name.startswith(".data-tiny")], "no half-built folder left"


def test_generate_records_the_data_section_that_built_the_version(clone):
    result = runner.invoke(app, ["data", "generate", "configs/tiny.yaml", "--set", "data.dir=data-mine",
                                 "--set", "data.n_eval=7", "--no-push"])
    assert result.exit_code == 0, result.output
    import yaml

    meta = yaml.safe_load((clone / "data-mine.dvc").read_text())["meta"]["r1flow_data"]
    assert meta["n_eval"] == 7 and "dir" not in meta
    result = runner.invoke(app, ["data", "ensure", "configs/tiny.yaml", "--set", "data.dir=data-mine"])
    assert result.exit_code == 2 and "data.n_eval=24, but data-mine/ was built with 7" in result.output


def test_ensure_never_overwrites_edited_data(clone):
    assert runner.invoke(app, ["data", "ensure", "configs/tiny.yaml"]).exit_code == 0
    edited = clone / "data-tiny" / "eval.jsonl"
    edited.write_text(edited.read_text() + edited.read_text().splitlines(keepends=True)[0])
    before = snapshot(clone)
    result = runner.invoke(app, ["data", "ensure", "configs/tiny.yaml"])
    assert result.exit_code == 2 and "run `dvc add data-tiny`" in result.output, result.output
    assert snapshot(clone) == before


def test_a_recipe_without_its_dvc_file_names_the_command(clone):
    result = runner.invoke(app, ["data", "ensure", "configs/tiny.yaml", "--set", "data.dir=data-mine"])
    assert result.exit_code == 2 and "data-mine.dvc: not found; run `r1flow data generate`" in result.output


def test_a_dvc_failure_is_reported_with_dvcs_own_message(clone):
    (clone / ".gitignore").write_text("/data-mine.dvc\n")  # DVC refuses a .dvc file that git ignores
    result = runner.invoke(app, ["data", "generate", "configs/tiny.yaml", "--set", "data.dir=data-mine", "--no-push"])
    assert result.exit_code == 2, result.output
    assert "`dvc add data-mine` failed: ERROR: bad DVC file name 'data-mine.dvc' is git-ignored" in result.output
