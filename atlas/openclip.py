"""open_clip, imported as atlas needs it: its architecture configs read without importing it, and the package
imported without transformers unless the architecture's text tower is a Hugging Face model.

open_clip imports transformers eagerly (`open_clip.hf_model`, `open_clip.coca_model`), though only architectures
whose config names an ``hf_model_name`` use it; transformers pulls in scikit-learn and more: 0.7 s of a 2.6 s
import here, 4.3 s of a 10 s import on the device's H100 host (docs/benchmarks.md, start-up profile).
`import_open_clip` hides transformers while open_clip is imported, and brings it back (re-running the two
modules' imports) the first time an architecture needs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType

_USES_TRANSFORMERS = ("open_clip.hf_model", "open_clip.coca_model")


@lru_cache(maxsize=None)
def open_clip_config(arch: str) -> dict | None:
    """open_clip's JSON config of ``arch`` (its model_configs/ARCH.json), read without importing open_clip; None
    where open_clip is not installed or has no such architecture."""
    found = importlib.util.find_spec("open_clip")  # finds the package without importing it
    for root in (found.submodule_search_locations or []) if found else []:
        f = Path(root) / "model_configs" / f"{arch}.json"
        if f.is_file():
            return json.loads(f.read_text())
    return None


def needs_transformers(arch: str) -> bool:
    """Whether open_clip's ``arch`` has a Hugging Face text tower (its config names ``hf_model_name``)."""
    return bool(((open_clip_config(arch) or {}).get("text_cfg") or {}).get("hf_model_name"))


def import_open_clip(transformers: bool = False) -> ModuleType:
    """The open_clip package; without importing transformers unless ``transformers`` (or it is imported already)."""
    if "open_clip" not in sys.modules and not transformers and "transformers" not in sys.modules:
        sys.modules["transformers"] = None  # type: ignore[assignment]  # `import transformers` raises ImportError
        try:
            import open_clip  # noqa: F401
        finally:
            if sys.modules.get("transformers", 0) is None:
                del sys.modules["transformers"]
    import open_clip

    if transformers and getattr(sys.modules.get("open_clip.hf_model"), "transformers", 0) is None:
        for name in _USES_TRANSFORMERS:  # imported while hidden: run their imports again (same module objects)
            if name in sys.modules:
                importlib.reload(sys.modules[name])
    return open_clip
