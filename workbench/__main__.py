"""``python -m workbench``: the command line (``workbench.ui.cli``), with the commands of the
layers above it that it may not import itself (the planner's ``plan``)."""

from __future__ import annotations

import sys
from typing import Sequence

from workbench.lessons.planner.command import PLAN
from workbench.ui.cli import main as cli_main

#: Subcommands from layers above ``ui`` (sitting on top, this module may import every layer).
COMMANDS = (PLAN,)


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(argv, commands=COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
