"""The `atlas` command line: each command parses options and calls one library function.

`common` holds the `main` group and the shared options; the commands register themselves on it by topic:
`pipeline_commands` (build, mine, featurevis, site, verify, info), `model_commands` (models, convert, layers,
train, eval), `report_commands` (probe, attack, audit) and `sae_commands` (sae train, sae eval).
"""

from . import model_commands, pipeline_commands, report_commands, sae_commands  # noqa: F401 (registers the commands on main)
from .common import USER_ERRORS, main

__all__ = ["USER_ERRORS", "main"]
