"""The README's examples stay true: every YAML recipe block validates, and every recipe and
command it names exists."""
import re
from pathlib import Path

import pytest

from tasks.recipe import load_recipe

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text()


@pytest.mark.parametrize("block", re.findall(r"```yaml\n(.*?)```", TEXT, re.S))
def test_each_yaml_recipe_in_the_readme_validates(block, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(block)
    load_recipe(path)  # raises with the field path on any unknown or invalid field


def test_the_recipes_and_images_it_names_exist():
    root = README.parent
    for rel in set(re.findall(r"configs/[\w.-]+\.yaml", TEXT)) | set(re.findall(r"\(docs/[\w.-]+\.png\)", TEXT)):
        assert (root / rel.strip("()")).is_file(), rel
    for rel in set(re.findall(r"bench/[\w.-]+\.py", TEXT)):
        assert (root / rel).is_file(), rel
