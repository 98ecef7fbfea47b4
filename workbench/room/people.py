"""Who is asking: an attendee's name, checked before it names anything on disk.

A name becomes a folder (``<room>/runs/<name>/``) and a column in the ledger, so it must not
be able to point anywhere else: JupyterHub's user names (lowercase letters, digits, '.',
'_' and '-') pass; a slash, a backslash, '..', a leading dot, spaces or an empty name are
refused with a message that says what is allowed.  On a hub the name is the hub's own
(``JUPYTERHUB_USER``, set in every single-user server), so an attendee cannot claim
another's name from their notebook without editing the environment; the room is a
classroom, not a bank (see docs/workshop-room.md for what it does and does not protect).
"""

from __future__ import annotations

import os
import re

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,39}$")
ALLOWED = "1 to 40 characters: lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"


class BadName(ValueError):
    """An attendee name that cannot be used: the message says why and what is allowed."""


def check_name(name: object, role: str = "attendee") -> str:
    """The name as given when it is usable, else ``BadName`` saying what is wrong."""
    if not isinstance(name, str):
        raise BadName(f"{role} name must be text, got {type(name).__name__}")
    problems = [why for bad, why in (("/", "a '/'"), ("\\", "a '\\'"), ("..", "'..'"), ("\x00", "a NUL byte"))
                if bad in name]
    if name != name.strip() or " " in name:
        problems.append("spaces")
    if name.startswith("."):
        problems.append("a leading '.'")
    if problems or not NAME_PATTERN.match(name):
        what = f" (it has {', '.join(problems)}: a name names a folder and must not point anywhere else)" if problems else ""
        raise BadName(f"{role} name {name!r} cannot be used{what}; allowed: {ALLOWED}, e.g. 'ada' or 'j.smith'")
    return name


def name_from_environment(default: str | None = None) -> str:
    """The hub's name for this notebook's user (``JUPYTERHUB_USER``), checked; ``default`` off a hub."""
    name = os.environ.get("JUPYTERHUB_USER") or default
    if name is None:
        raise BadName("no attendee name: not running under JupyterHub (JUPYTERHUB_USER is unset) and none was given")
    return check_name(name)


__all__ = ["BadName", "check_name", "name_from_environment", "NAME_PATTERN", "ALLOWED"]
