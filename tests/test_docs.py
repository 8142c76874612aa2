"""Documentation is tested: the schema page names everything the code writes; the README runs."""

from __future__ import annotations

import re
from pathlib import Path

import h5py

from atlas.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_store_schema_documents_every_dataset_and_attribute(small_store):
    doc = (ROOT / "docs" / "store.md").read_text()
    names: list[str] = []
    with h5py.File(small_store, "r") as f:
        f.visit(names.append)
        attrs = set(f.attrs)
        for n in names:
            attrs |= set(f[n].attrs)
    for n in names:
        generic = re.sub(r"^neurons/[^/]+/[^/]+", "neurons/<model>/<layer>", n)
        leaf = generic.replace("neurons/<model>/<layer>/", "")
        if isinstance(h5py.File(small_store, "r")[n], h5py.Dataset):
            assert f"`{leaf.split('/', 1)[-1] if generic.startswith('images/') else leaf}`" in doc, n
    for a in attrs:
        assert f"`{a}`" in doc, f"attribute {a} is not documented in docs/store.md"


def test_readme_has_exactly_two_setup_commands_and_every_cli_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash)\n(.*?)```", readme, re.S)
    assert len(blocks[0].strip().splitlines()) == 2, "the first code block holds the two set-up commands"
    build_cmd, test_cmd = blocks[0].strip().splitlines()
    assert "atlas build" in build_cmd or "cli.py build" in build_cmd
    assert "pytest" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd.strip() in ci, ".ci/run must run the README's test command"
    for name in main.commands:
        assert f"atlas {name}" in readme, f"command `atlas {name}` is missing from the README"


def test_every_package_ships_in_the_wheel():
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "atlas").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert cfg["package-dir"] == {"atlas.site_templates": "site_templates", "atlas.shipped": "data"}


def test_models_doc_covers_every_family_and_the_three_commands():
    from atlas.models import FAMILIES

    doc = (ROOT / "docs" / "models.md").read_text()
    for family in FAMILIES:
        assert f"`{family}:" in doc, f"family {family} is not documented in docs/models.md"
    block = re.search(r"## An atlas of OpenAI's RN50x4 in three commands\n\n```sh\n(.*?)```", doc, re.S)
    assert block and len(block.group(1).strip().splitlines()) == 3
    assert "atlas convert" in block.group(1) and "atlas build --model openai:RN50x4@" in block.group(1)
