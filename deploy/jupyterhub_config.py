"""JupyterHub for a workshop room on this machine (``make hub``): 127.0.0.1:8000.

What it sets up (docs/workshop-room.md explains each choice and the real-server versions):

* log-in: a name and the workshop code (``WORKBENCH_WORKSHOP_CODE``, required: the hub
  refuses to start without one).  The dummy authenticator checks only that shared code;
  the name must be a usable attendee name (``workbench.room.people``), else the log-in is
  refused with the reason.
* the instructor (``WORKBENCH_INSTRUCTOR``, default "instructor") is the hub's admin and
  lands in ``classroom.ipynb``; everyone else lands in ``workbench.ipynb`` (the panel,
  training into the room).
* each person's server is a local process (the simple spawner: no system accounts) whose
  home is ``<state>/homes/<name>``; it is told the room's folder (``WORKBENCH_ROOM``) and
  the Ray address of the room's queue (``WORKBENCH_RAY_ADDRESS``, set by ``make hub``).
* the proxy is configurable-http-proxy from npm, installed by ``make hub`` under
  ``deploy/node_modules``; the hub's own state (its SQLite database, cookie secret, the
  proxy's pid) goes to ``WORKBENCH_HUB_STATE`` (default ``deploy/state``).
"""

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
sys.path.insert(0, str(CHECKOUT))  # this checkout's workbench, for the room and the name check

from workbench.room.people import NAME_PATTERN, check_name  # noqa: E402
from workbench.room.store import RoomStore  # noqa: E402

c = get_config()  # noqa: F821 - JupyterHub's config loader provides it

STATE = Path(os.environ.get("WORKBENCH_HUB_STATE", HERE / "state")).resolve()
ROOM = Path(os.environ.get("WORKBENCH_ROOM", STATE / "room")).resolve()
INSTRUCTOR = check_name(os.environ.get("WORKBENCH_INSTRUCTOR", "instructor"), "instructor")
CODE = os.environ.get("WORKBENCH_WORKSHOP_CODE", "")
if len(CODE) < 4:
    raise SystemExit("set the workshop code first: WORKBENCH_WORKSHOP_CODE=<at least 4 characters> make hub "
                     "(attendees type it to log in)")
(STATE / "homes").mkdir(parents=True, exist_ok=True)
RoomStore(ROOM, create=True).add_instructor(INSTRUCTOR)  # the room exists before anyone logs in

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(os.environ.get("WORKBENCH_HUB_PORT", "8000"))
c.JupyterHub.hub_port = int(os.environ.get("WORKBENCH_HUB_API_PORT", "8081"))
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ.get('WORKBENCH_PROXY_API_PORT', '8001')}"
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(STATE / "proxy.pid")
c.ConfigurableHTTPProxy.command = [str(HERE / "node_modules" / ".bin" / "configurable-http-proxy")]

c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = CODE
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {INSTRUCTOR}


# A name that could not name a folder of the room is refused at log-in (workbench.room.people).
c.Authenticator.username_pattern = NAME_PATTERN.pattern

c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = str(STATE / "homes" / "{username}")
c.Spawner.cmd = [str(Path(sys.executable).parent / "jupyterhub-singleuser")]
c.Spawner.args = ["--ServerApp.ip=127.0.0.1"] + (["--allow-root"] if os.geteuid() == 0 else [])
c.Spawner.http_timeout = 120
c.Spawner.start_timeout = 180
c.Spawner.environment = {
    "WORKBENCH_ROOM": str(ROOM),
    "WORKBENCH_RAY_ADDRESS": os.environ.get("WORKBENCH_RAY_ADDRESS", ""),
    "WORKBENCH_PRESET": os.environ.get("WORKBENCH_PRESET", "default"),
    "HF_HUB_OFFLINE": "1",
    "PYTHONPATH": str(CHECKOUT),
}
# Passed on when set: the runs at once (the queue's limit), the lease of a running turn (s; a stopped
# server's slot is freed after it), the panel's model, the ledger's PostgreSQL URL (a room whose servers
# spread over machines; unset: SQLite in the room's folder), and JupyterLab's settings (e.g. no news pop-up).
for _var in ("WORKBENCH_ROOM_LIMIT", "WORKBENCH_ROOM_LEASE_S", "WORKBENCH_MODEL", "WORKBENCH_ROOM_DB",
             "JUPYTERLAB_SETTINGS_DIR", "RAY_AUTH_MODE"):
    if os.environ.get(_var):
        c.Spawner.environment[_var] = os.environ[_var]
# Ray's head checks a token (Ray 2.60 does by default): the kernels, whose HOME is their own folder, are pointed at the
# token the head was started with (the hub's user's ~/.ray/auth_token, unless RAY_AUTH_TOKEN_PATH says where).
_token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
if _token.is_file():
    c.Spawner.environment["RAY_AUTH_TOKEN_PATH"] = str(_token)


def _land(spawner):
    """Put the person's notebook in their home and open it: the classroom for the instructor,
    the workbench panel (training into the room) for an attendee."""
    home = Path(spawner.home_dir_template.format(username=spawner.user.name))
    home.mkdir(parents=True, exist_ok=True)
    name = "classroom.ipynb" if spawner.user.admin else "workbench.ipynb"
    source = CHECKOUT / "notebooks" / "classroom.ipynb" if spawner.user.admin else HERE / "attendee.ipynb"
    if not (home / name).exists():
        shutil.copy(source, home / name)
    shutil.copy(CHECKOUT / "notebooks" / "_setup.py", home / "_setup.py")
    spawner.default_url = f"/lab/tree/{name}"


c.Spawner.pre_spawn_hook = _land
