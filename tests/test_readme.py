"""The README's and docs/'s examples stay true: every YAML recipe block validates, every recipe,
image, bench script and doc they name exists, and every `--set section.field=` they show names a
field of the recipe schema."""
import re
from pathlib import Path

import pytest

from components.config import _field_names
from tasks.recipe import Recipe, load_recipe

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TEXT = README.read_text()
DOCS = {p.relative_to(ROOT).as_posix(): p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}
ALL = {"README.md": TEXT, **DOCS}


@pytest.mark.parametrize("block", re.findall(r"```yaml\n(.*?)```", TEXT, re.S))
def test_each_yaml_recipe_in_the_readme_validates(block, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(block)
    load_recipe(path)  # raises with the field path on any unknown or invalid field


@pytest.mark.parametrize("name", sorted(ALL))
def test_the_recipes_images_benches_and_docs_it_names_exist(name):
    text = ALL[name]
    named = (set(re.findall(r"configs/[\w.-]+\.yaml", text)) | set(re.findall(r"bench/[\w.-]+\.py", text))
             | {m.strip("()") for m in re.findall(r"\(docs/[\w.-]+\.(?:png|md)\)", text)}
             | set(re.findall(r"docs/[\w.-]+\.md", text)))
    missing = sorted(rel for rel in named if not (ROOT / rel).is_file())
    assert not missing, f"{name} names files that do not exist: {missing}"


def set_paths(text: str) -> set[str]:
    """The `section.field` of each `--set section.field=VALUE` in a text (commands may wrap lines)."""
    return set(re.findall(r'--set\s+"?([a-z_0-9]+(?:\.[a-z_0-9]+)+)=', text.replace("\n", " ")))


def test_set_paths_finds_wrapped_and_quoted_overrides():
    text = 'r1flow run x --set\nreasoning_rl.beta=0 --set "run.stages=[base]" --set reasoning_rl.FIELD=V'
    assert set_paths(text) == {"reasoning_rl.beta", "run.stages"}


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_override_it_shows_names_a_recipe_field(name):
    """Checked against the recipe schema, as the loader's "did you mean" hint resolves a path."""
    unknown = [path for path in sorted(set_paths(ALL[name]))
               if (keys := path.split("."))[-1] not in _field_names(Recipe, tuple(keys[:-1]))]
    assert not unknown, f"{name} shows overrides of fields the recipe does not have: {unknown}"
