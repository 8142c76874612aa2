"""docs/architecture.md is kept true: every module of atlas sits in one layer, and no module imports (at the top or
inside a function) from a layer above its own; the site and the store import no torch."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "atlas"


def layers() -> list[list[str]]:
    """The layers of docs/architecture.md's table, lowest first: [[module prefix, ...], ...]."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = doc.split("## Layers", 1)[1]
    rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| layer")]
    return [re.findall(r"`(atlas[\w.]*)`", r.split("|")[2]) for r in rows]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every atlas module ``path`` imports, anywhere in the file (function-local imports too)."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("atlas"):
                continue
            if node.module is None or target == "atlas":  # from . import store: the module atlas.store
                out |= {f"{target}.{a.name}" for a in node.names}
            else:
                out.add(target)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("atlas")}
    return out


def layer_of(mod: str, table: list[list[str]]) -> int:
    """The layer of the longest prefix of ``mod`` named in the table."""
    best, level = -1, None
    for i, prefixes in enumerate(table):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best:
                best, level = len(p), i
    assert level is not None, f"module {mod} is in no layer of docs/architecture.md: add it there"
    return level


def test_every_module_imports_only_from_its_layer_or_below():
    table = layers()
    assert len(table) >= 6
    wrong = []
    for path in sorted(PKG.rglob("*.py")):
        mod = module_name(path)
        if mod in ("atlas", "atlas.__main__"):  # the facade and `python -m atlas` sit above everything
            continue
        mine = layer_of(mod, table)
        for target in imports(path):
            if target in ("atlas", "atlas.__main__"):
                wrong.append(f"{mod} imports the package facade {target}: import the module itself")
            elif layer_of(target, table) > mine:
                wrong.append(f"{mod} (layer {mine}) imports {target} (layer {layer_of(target, table)})")
    assert not wrong, "imports against the layering of docs/architecture.md:\n" + "\n".join(wrong)


def test_site_and_store_import_no_torch_and_no_model():
    for path in [*sorted((PKG / "store").glob("*.py")), *sorted((PKG / "site").glob("*.py"))]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import torch|from torch)", text, re.M), f"{path.name} imports torch"
        assert not any(t.startswith(("atlas.models", "atlas.mining")) for t in imports(path)), path


def test_the_layer_table_names_modules_that_exist():
    for prefixes in layers():
        for p in prefixes:
            rel = Path(*p.split("."))
            assert (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists(), p


def test_the_import_reader_sees_local_imports_and_the_checker_flags_upward_ones():
    assert {"atlas.verify", "atlas.data", "atlas.models"} <= imports(PKG / "cli" / "pipeline_commands.py")  # imports inside functions
    assert {"atlas.store", "atlas.version", "atlas.mining.cuda_graphs"} <= imports(PKG / "mining" / "loop.py")  # `from .. import store` too
    table = layers()
    assert layer_of("atlas.site.render", table) > layer_of("atlas.store", table) > layer_of("atlas.models", table)
    assert layer_of("atlas.data.conceptworld.world", table) == layer_of("atlas.data", table)  # longest prefix


def test_no_private_name_is_imported_from_another_module():
    wrong = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                wrong += [f"{module_name(path)} imports {a.name} from {'.' * node.level}{node.module or ''}"
                          for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not wrong, "private names used across modules (make them public or move them):\n" + "\n".join(wrong)


def test_only_the_store_touches_hdf5():
    """The store owns every read and write of the schema: no other module imports h5py or names it."""
    wrong = [module_name(p) for p in sorted(PKG.rglob("*.py"))
             if not module_name(p).startswith("atlas.store") and re.search(r"\bh5py\b", p.read_text(encoding="utf-8"))]
    assert not wrong, f"h5py outside atlas.store (add a function to atlas/store/ instead): {wrong}"
