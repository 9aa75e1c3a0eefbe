"""OpenStack for the image tests: a real Keystone and two real Glance API servers on loopback.

Keystone 30 and Glance 33 from PyPI, pinned in tests/testbed/openstack-requirements.txt, in
a virtual environment of their own under the testbed cache (installed once, keyed by a hash
of that file): the tests' .venv pins openstacksdk 4.14 for openstack.cloud, and the servers
need newer libraries. SQLite databases, fernet tokens, Glance's file store; every server is
a gunicorn with one worker bound to 127.0.0.1. Glance runs twice, one per region (RegionOne,
RegionTwo), both in Keystone's catalog. Test users: alpha (project alpha, RegionOne) and beta
(project beta, RegionTwo), each with role member in its project. All data is throwaway:
every fresh `up` starts from the initial state (databases after keystone-manage bootstrap,
the test users and the catalog, and the keys), built by the first `up` of a recipe and then
copied from the testbed cache, which saves ~15 s of CPU per start.

    python -m hepinfra_testbed.openstack up      # prints auth URL, passwords, pids as JSON
    python -m hepinfra_testbed.openstack down
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from .common import TestbedError, cache_dir, log, recipe_hash, run, state_dir, wait_for

KEYSTONE_PORT = 58500
GLANCE_PORTS = {"RegionOne": 58501, "RegionTwo": 58502}
AUTH_URL = f"http://127.0.0.1:{KEYSTONE_PORT}/v3"
REQUIREMENTS = Path(__file__).resolve().parent.parent / "openstack-requirements.txt"
DOMAIN = "Default"  # the domain keystone-manage bootstrap creates; everything lives in it
# Fixed test credentials: they only ever open servers on loopback that the tests start.
ADMIN_PASSWORD = "hepinfra-testbed-admin-0123456789"
GLANCE_PASSWORD = "hepinfra-testbed-glance-0123456789"
USERS = {
    "alpha": {"password": "hepinfra-testbed-alpha-0123456789", "project": "alpha", "region": "RegionOne"},
    "beta": {"password": "hepinfra-testbed-beta-0123456789", "project": "beta", "region": "RegionTwo"},
}
START_TIMEOUT = 120  # seconds for a server to answer; they need 3-10 s here

# oslo.config parses sys.argv when the application configures itself: under gunicorn that is
# gunicorn's command line, which it rejects. The WSGI module is therefore loaded through a
# shim that clears argv first.
_SHIM = '''"""Loads {app} for gunicorn with an empty command line (oslo.config would parse gunicorn's)."""
import sys

sys.argv = sys.argv[:1]
from {app} import application  # noqa: E402  pylint: disable=wrong-import-position,unused-import
'''
_SHIMS = {"keystone": "keystone.wsgi.api", "glance": "glance.wsgi.api"}


@dataclass
class OpenStack:
    """A running Keystone with a Glance per region, and the test users."""

    auth_url: str
    admin_password: str
    users: dict[str, dict[str, str]]
    pids: dict[str, int]
    data: str

    def auth(self, user: str) -> dict[str, str]:
        """openstacksdk's `auth` for a test user, scoped to the user's project."""
        entry = self._user(user)
        return {
            "auth_url": self.auth_url,
            "username": user,
            "password": entry["password"],
            "project_name": entry["project"],
            "user_domain_name": DOMAIN,
            "project_domain_name": DOMAIN,
        }

    def region(self, user: str) -> str:
        """The region whose Glance the user's tests talk to."""
        return self._user(user)["region"]

    def as_json(self) -> str:
        """Everything above as JSON (what `python -m hepinfra_testbed.openstack up` prints)."""
        return json.dumps(asdict(self))

    def _user(self, user: str) -> dict[str, str]:
        try:
            return self.users[user]
        except KeyError:
            raise TestbedError(f"no test user {user!r}: the users are {', '.join(sorted(self.users))}") from None


@dataclass
class _Server:
    """How one server of the set is started and checked."""

    name: str  # "keystone", "glance-RegionOne", ...
    port: int
    health_url: str
    log: Path
    shim: str  # module gunicorn loads
    env: dict[str, str]


# -- the servers' virtual environment ----------------------------------------------------------


def venv() -> Path:
    """The virtual environment with Keystone, Glance and gunicorn, installed once into the cache."""
    requirements = REQUIREMENTS.read_text()
    path = cache_dir() / "openstack" / f"venv-{recipe_hash(requirements)}"
    marker = path / ".installed"
    # A venv's python is a link to the interpreter that made it: gone if that one was removed.
    if marker.exists() and os.access(path / "bin" / "python", os.X_OK):
        return path
    log("installing Keystone and Glance from PyPI into the testbed cache (about 3 minutes, once)")
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The interpreter running the testbed (the collection's Python 3.11) makes the venv; the
    # pins were frozen on 3.11. pip is upgraded first: the pins were installed with a current
    # pip, and the one ensurepip bundles is older.
    run([sys.executable, "-m", "venv", path])
    run([path / "bin" / "python", "-m", "pip", "install", "-q", "--upgrade", "pip"], timeout=600)
    run([path / "bin" / "python", "-m", "pip", "install", "-q", "-r", REQUIREMENTS], timeout=1800)
    marker.touch()
    return path


# -- configuration -------------------------------------------------------------------------------


def _root() -> Path:
    return state_dir() / "openstack"


def _state() -> Path:
    return state_dir() / "openstack.json"


def _recipe() -> str:
    """What a running set was made from: a set made by another recipe is not reused."""
    return recipe_hash(REQUIREMENTS.read_text(), KEYSTONE_PORT, GLANCE_PORTS, USERS, ADMIN_PASSWORD, GLANCE_PASSWORD,
                       _keystone_conf, _glance_conf, _setup, _identity, _gunicorn, _SHIM)


def _keystone_conf(root: Path) -> Path:
    directory = root / "keystone"
    # Keys readable by their owner only (Keystone warns at every token otherwise).
    (directory / "credential-keys").mkdir(mode=0o700, parents=True)
    (directory / "fernet-keys").mkdir(mode=0o700)
    conf = directory / "keystone.conf"
    conf.write_text(f"""[DEFAULT]
log_file = {directory / 'keystone.log'}

[database]
connection = sqlite:///{directory / 'keystone.db'}

[token]
provider = fernet

[fernet_tokens]
key_repository = {directory / 'fernet-keys'}

# Keystone needs a key repository for receipts (multi-factor auth) too: the token keys serve.
[fernet_receipts]
key_repository = {directory / 'fernet-keys'}

[credential]
key_repository = {directory / 'credential-keys'}

# Without a cache every request costs 200-300 ms (role and catalog look-ups). A memory cache
# lives in one process: hence one gunicorn worker.
[cache]
enabled = true
backend = dogpile.cache.memory

# bcrypt's default cost makes every password authentication take ~0.3 s; test passwords
# need no strength.
[identity]
password_hash_rounds = 4
""")
    return conf


def _glance_conf(root: Path, region: str, paste_ini: Path) -> Path:
    directory = root / f"glance-{region}"
    for sub in ("images", "staging", "tasks", "locks"):
        (directory / sub).mkdir(parents=True)
    # A copy of the venv's paste pipeline: the config directory is complete on its own.
    shutil.copy(paste_ini, directory / "glance-api-paste.ini")
    conf = directory / "glance-api.conf"
    conf.write_text(f"""[DEFAULT]
enabled_backends = fs:file
# gunicorn binds the socket; these say the same for whatever Glance derives from them.
bind_host = 127.0.0.1
bind_port = {GLANCE_PORTS[region]}
log_file = {directory / 'glance-api.log'}

[database]
connection = sqlite:///{directory / 'glance.db'}

[paste_deploy]
flavor = keystone
config_file = {directory / 'glance-api-paste.ini'}

# keystonemiddleware validates the users' tokens as the glance user. With
# service_token_roles_required it checks that service tokens carry role service: the glance
# user has it as well as admin.
[keystone_authtoken]
auth_type = password
auth_url = {AUTH_URL}
www_authenticate_uri = {AUTH_URL}
username = glance
password = {GLANCE_PASSWORD}
project_name = service
user_domain_name = {DOMAIN}
project_domain_name = {DOMAIN}
service_token_roles_required = true

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = {directory / 'images'}

[os_glance_staging_store]
filesystem_store_datadir = {directory / 'staging'}

[os_glance_tasks_store]
filesystem_store_datadir = {directory / 'tasks'}

[oslo_concurrency]
lock_path = {directory / 'locks'}
""")
    return conf


def _server_env(extra: dict[str, str]) -> dict[str, str]:
    """Variables for the servers and their tools (merged into this process's environment)."""
    return {
        # The tests' PYTHONPATH (the testbed package) means nothing to the servers' venv.
        "PYTHONPATH": "",
        # Deprecation warnings (eventlet's, at every start) would bury the errors in the logs.
        "PYTHONWARNINGS": "ignore",
        # Keystone and Glance talk to each other on loopback: never through a proxy.
        "no_proxy": "127.0.0.1,localhost",
        "NO_PROXY": "127.0.0.1,localhost",
        **extra,
    }


def _servers(root: Path) -> dict[str, _Server]:
    servers = {"keystone": _Server(
        name="keystone", port=KEYSTONE_PORT, health_url=AUTH_URL, log=root / "keystone" / "keystone.log",
        shim="hepinfra_tb_keystone_wsgi",
        env=_server_env({"OS_KEYSTONE_CONFIG_FILES": str(root / "keystone" / "keystone.conf")}),
    )}
    for region, port in GLANCE_PORTS.items():
        directory = root / f"glance-{region}"
        servers[f"glance-{region}"] = _Server(
            name=f"glance-{region}", port=port, health_url=f"http://127.0.0.1:{port}/healthcheck",
            log=directory / "glance-api.log", shim="hepinfra_tb_glance_wsgi",
            env=_server_env({"OS_GLANCE_CONFIG_DIR": str(directory)}),
        )
    return servers


# -- processes -----------------------------------------------------------------------------------


def _gunicorn(env_dir: Path, server: _Server, shim_dir: Path) -> list[str]:
    return [
        str(env_dir / "bin" / "gunicorn"),
        "--bind", f"127.0.0.1:{server.port}",
        # One worker: Keystone's token cache is in process memory, and SQLite wants one writer.
        "--workers", "1",
        "--timeout", "300",  # a sync worker serves an image upload in one request
        "--graceful-timeout", "3",
        # Otherwise every gunicorn here shares ~/.gunicorn/gunicorn.ctl.
        "--no-control-socket",
        "--access-logfile", "-",
        "--name", _proc_name(server),
        "--pythonpath", str(shim_dir),
        f"{server.shim}:application",
    ]


def _start(env_dir: Path, server: _Server, root: Path) -> subprocess.Popen[bytes]:
    """Start one server in a session of its own; its output goes to the server's log."""
    full_env = dict(os.environ)
    full_env.update(server.env)
    with open(server.log, "ab") as log_file:
        return subprocess.Popen(  # pylint: disable=consider-using-with
            _gunicorn(env_dir, server, root / "wsgi"), env=full_env, stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True,
        )


# The last line of a Python traceback; a worker that fails to boot prints its own traceback
# and then gunicorn's shutdown noise, which alone would end the log.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Failure): ")


def _excerpt(path: Path, lines: int = 20) -> str:
    """The exceptions a log holds and its last lines, indented for an error message."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"    (cannot read it: {exc})"
    causes = list(dict.fromkeys(line for line in text if _EXCEPTION_LINE.match(line)))[-3:]
    head = "exceptions in it:\n" + "\n".join("    " + line for line in causes) + "\nand " if causes else ""
    return head + "ending:\n" + ("\n".join("    " + line for line in text[-lines:]) or "    (empty)")


def _failure(server: _Server, detail: str) -> TestbedError:
    return TestbedError(f"{server.name} {detail}; its log is {server.log}, {_excerpt(server.log)}")


def _wait_healthy(server: _Server, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the server answers its health URL; fail at once when gunicorn exits."""

    def answers_or_exited() -> bool:
        return proc.poll() is not None or _answers(server.health_url)

    try:
        wait_for(answers_or_exited, START_TIMEOUT, 0.2, f"{server.name} on port {server.port}")
    except TestbedError as exc:
        raise _failure(server, f"did not answer on {server.health_url} ({exc})") from None
    if proc.poll() is not None:
        raise _failure(server, f"exited at start (gunicorn status {proc.returncode})")


def _members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of a process group; reaps the leader if it is our child."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which may hold spaces: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _proc_name(server: _Server) -> str:
    """gunicorn's process name for the server: in the command line, or the title gunicorn sets."""
    return f"hepinfra-tb-{server.name}@127.0.0.1:{server.port}"


def _ours(pid: int, server: _Server) -> bool:
    """Whether pid is a gunicorn process of this server (a recorded pid may have been reused).

    gunicorn retitles its processes ("gunicorn: master [<name>]") through setproctitle, which
    is in the venv: the original command line is gone, the name given by --name stays.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
    except OSError:
        return False
    return "gunicorn" in cmdline and _proc_name(server) in cmdline


def _stop(*servers: tuple[int, _Server]) -> None:
    """Stop servers, each a whole process group: SIGTERM, then SIGKILL after a short wait.

    The groups, not only the masters: workers outlive a master killed by SIGKILL. A recorded
    pid whose group holds no process of that server any more is left alone.
    """
    groups = {pid: server for pid, server in servers if any(_ours(member, server) for member in _members(pid))}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_members(pid) for pid in groups):
            time.sleep(0.1)
        groups = {pid: server for pid, server in groups.items() if _members(pid)}
        if not groups:
            return
    survivors = ", ".join(f"{server.name} (process group {pid}: {_members(pid)})" for pid, server in groups.items())
    raise TestbedError("survived SIGKILL: " + survivors)


def _strays(servers: dict[str, _Server]) -> list[tuple[int, _Server]]:
    """Process groups of testbed servers that no state file records (found by their names)."""
    found: dict[int, _Server] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        for server in servers.values():
            if _ours(int(entry.name), server):
                with contextlib.suppress(OSError):  # a worker too: its master may be gone
                    found[os.getpgid(int(entry.name))] = server
    return list(found.items())


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _check_ports(servers: dict[str, _Server]) -> None:
    for server in servers.values():
        if not _port_free(server.port):
            who = run(["ss", "-Hltnp", f"sport = :{server.port}"], check=False).stdout.strip() \
                if shutil.which("ss") else ""
            raise TestbedError(
                f"port {server.port} (for {server.name}) is in use by another program: stop it, or change the "
                f"ports at the top of hepinfra_testbed/openstack.py" + (f"\n    {who}" if who else ""))


# -- the Keystone API, by plain REST (the testbed needs no client library) ----------------------

# Loopback only: never through a proxy, whatever the environment says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(method: str, url: str, *, token: str | None = None, body: Any = None,
          timeout: float = 30) -> tuple[dict[str, str], Any]:
    """One JSON request; returns the response headers and decoded body, raises TestbedError."""
    headers = {"Accept": "application/json"}
    if token:
        headers["X-Auth-Token"] = token
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            raw = response.read()
            return dict(response.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:1000]
        raise TestbedError(f"{method} {url} answered {exc.code}: {detail}") from None
    except OSError as exc:
        raise TestbedError(f"{method} {url} failed ({exc}): is the OpenStack testbed up?") from None


def _answers(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _token(user: str, password: str, project: str) -> tuple[str, dict[str, Any]]:
    """A project-scoped token by password: the token and its body (user id, catalog)."""
    headers, body = _http("POST", f"{AUTH_URL}/auth/tokens", body={"auth": {
        "identity": {"methods": ["password"], "password": {
            "user": {"name": user, "domain": {"name": DOMAIN}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": DOMAIN}}},
    }})
    return headers["X-Subject-Token"], body["token"]


def _identity() -> None:
    """Projects, users, roles, the second region and Glance's endpoints, as the admin."""
    admin, _body = _token("admin", ADMIN_PASSWORD, "admin")

    def create(kind: str, plural: str, fields: dict[str, Any]) -> str:
        return _http("POST", f"{AUTH_URL}/{plural}", token=admin, body={kind: fields})[1][kind]["id"]

    roles = {role["name"]: role["id"] for role in _http("GET", f"{AUTH_URL}/roles", token=admin)[1]["roles"]}
    for name in ("member", "service"):  # bootstrap makes both today; older Keystones did not
        if name not in roles:
            roles[name] = create("role", "roles", {"name": name})
    projects = {name: create("project", "projects", {"name": name, "domain_id": "default"})
                for name in ("service", *(entry["project"] for entry in USERS.values()))}
    grants = [("glance", GLANCE_PASSWORD, "service", ("admin", "service"))]
    grants += [(name, entry["password"], entry["project"], ("member",)) for name, entry in USERS.items()]
    for name, password, project, role_names in grants:
        user_id = create("user", "users", {"name": name, "password": password, "domain_id": "default",
                                           "default_project_id": projects[project]})
        for role in role_names:
            _http("PUT", f"{AUTH_URL}/projects/{projects[project]}/users/{user_id}/roles/{roles[role]}", token=admin)
    existing = {region["id"] for region in _http("GET", f"{AUTH_URL}/regions", token=admin)[1]["regions"]}
    service_id = create("service", "services", {"type": "image", "name": "glance", "enabled": True})
    for region, port in GLANCE_PORTS.items():
        if region not in existing:
            create("region", "regions", {"id": region})
        for interface in ("public", "internal", "admin"):
            create("endpoint", "endpoints", {"service_id": service_id, "interface": interface, "region_id": region,
                                             "url": f"http://127.0.0.1:{port}"})


def _check_users(servers: dict[str, _Server]) -> None:
    """Each user's catalog names its region's Glance, and that Glance accepts the user's token."""
    for name, entry in USERS.items():
        token, body = _token(name, entry["password"], entry["project"])
        urls = [endpoint["url"] for service in body.get("catalog", []) if service["type"] == "image"
                for endpoint in service["endpoints"]
                if endpoint["interface"] == "public" and endpoint["region_id"] == entry["region"]]
        server = servers[f"glance-{entry['region']}"]
        if urls != [f"http://127.0.0.1:{server.port}"]:
            raise TestbedError(f"the catalog of {name} has image endpoints {urls} in {entry['region']}")
        try:
            _http("GET", f"{urls[0]}/v2/images", token=token)
        except TestbedError as exc:
            raise _failure(server, f"refused {name}'s token ({exc})") from None


# -- state -----------------------------------------------------------------------------------------


def _save(info: OpenStack) -> None:
    tmp = _state().with_suffix(".tmp")
    tmp.write_text(json.dumps({**asdict(info), "recipe": _recipe()}))
    tmp.replace(_state())


def _load() -> tuple[OpenStack | None, str | None]:
    try:
        data = json.loads(_state().read_text())
        recipe = data.pop("recipe", None)
        return OpenStack(**data), recipe
    except FileNotFoundError:
        return None, None
    except (ValueError, TypeError):  # a state file of an older layout: treated as stale
        return None, None


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One `up` or `down` at a time, also across processes (parallel test runners)."""
    with open(state_dir() / "openstack.lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _running() -> OpenStack | None:
    """The recorded set if every server of it runs and answers, else None."""
    info, recipe = _load()
    if info is None or recipe != _recipe():
        return None
    servers = _servers(Path(info.data))
    if set(info.pids) != set(servers):
        return None
    for name, server in servers.items():
        if not _ours(info.pids[name], server) or not _answers(server.health_url):
            return None
    return info


# -- the API the tests use -----------------------------------------------------------------------


def up() -> OpenStack:
    """Start Keystone and the Glances with fresh data (or reuse the healthy set already running)."""
    with _locked():
        current = _running()
        if current:
            return current
        _down()
        return _fresh()


def _fresh() -> OpenStack:
    started = time.monotonic()
    root = _root()
    servers = _servers(root)
    _check_ports(servers)
    env_dir = venv()
    shutil.rmtree(root, ignore_errors=True)
    (root / "wsgi").mkdir(parents=True)
    for component, app in _SHIMS.items():
        (root / "wsgi" / f"hepinfra_tb_{component}_wsgi.py").write_text(_SHIM.format(app=app))
    _keystone_conf(root)
    for region in GLANCE_PORTS:
        _glance_conf(root, region, env_dir / "etc" / "glance" / "glance-api-paste.ini")
    info = OpenStack(auth_url=AUTH_URL, admin_password=ADMIN_PASSWORD,
                     users={name: dict(entry) for name, entry in USERS.items()}, pids={}, data=str(root))
    _save(info)  # from here on, `down` cleans up whatever a failure leaves behind
    template = _template()
    from_template = all((template / name).exists() for name in _TEMPLATE_FILES)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        if from_template:
            _restore(template, root)
            for name, server in servers.items():
                procs[name] = _start(env_dir, server, root)
        else:
            _setup(env_dir, root, servers, procs)
        info.pids.update({name: proc.pid for name, proc in procs.items()})
        _save(info)
        _wait_healthy(servers["keystone"], procs["keystone"])
        if not from_template:
            _identity()
        for name, proc in procs.items():
            _wait_healthy(servers[name], proc)
        _check_users(servers)
    except BaseException as exc:
        # Stop the servers but keep their logs for the error message; `down` removes them.
        with contextlib.suppress(TestbedError):
            _stop(*((proc.pid, servers[name]) for name, proc in procs.items()))
        info.pids.clear()
        _save(info)
        if from_template and isinstance(exc, TestbedError):
            shutil.rmtree(template, ignore_errors=True)  # suspect: the next `up` builds it anew
        raise
    how = "from the cached initial state"
    if not from_template:
        try:
            _save_template(root, template)
            how = "initial state built and cached"
        except (OSError, sqlite3.Error) as exc:  # the servers run: only the next start is slower
            how = f"initial state built, not cached: {exc}"
    log(f"OpenStack up in {time.monotonic() - started:.0f} s ({how}): Keystone {AUTH_URL}, Glance "
        + ", ".join(f"{region} :{port}" for region, port in GLANCE_PORTS.items()))
    return info


def _setup(env_dir: Path, root: Path, servers: dict[str, _Server], procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Databases and keys from scratch, starting each server as soon as its own are ready."""
    keystone = servers["keystone"]
    manage = [str(env_dir / "bin" / "keystone-manage"), "--config-file", str(root / "keystone" / "keystone.conf")]
    # keystone-manage as root wants to be told which user owns the key repositories.
    owner = ["--keystone-user", pwd.getpwuid(os.geteuid()).pw_name,
             "--keystone-group", grp.getgrgid(os.getegid()).gr_name]

    def keystone_db() -> None:
        _manage(keystone, [*manage, "db_sync"])
        _manage(keystone, [*manage, "bootstrap", "--bootstrap-password", ADMIN_PASSWORD,
                           *(f"--bootstrap-{kind}-url={AUTH_URL}/" for kind in ("admin", "internal", "public")),
                           "--bootstrap-region-id", "RegionOne"])

    def glance() -> None:
        # The regions' databases start as the same empty schema: migrated once, copied.
        first, *others = GLANCE_PORTS
        _manage(servers[f"glance-{first}"], [str(env_dir / "bin" / "glance-manage"), "--config-file",
                                             str(root / f"glance-{first}" / "glance-api.conf"), "db_sync"])
        for region in others:
            shutil.copy(root / f"glance-{first}" / "glance.db", root / f"glance-{region}" / "glance.db")
        # Glance needs Keystone only for its first authenticated request: it starts at once.
        for region in GLANCE_PORTS:
            procs[f"glance-{region}"] = _start(env_dir, servers[f"glance-{region}"], root)

    # Every tool and server spends seconds importing its project: the steps run in parallel.
    with ThreadPoolExecutor(max_workers=4) as pool:
        keystone_steps = [pool.submit(keystone_db),
                          pool.submit(_manage, keystone, [*manage, "fernet_setup", *owner]),
                          pool.submit(_manage, keystone, [*manage, "credential_setup", *owner])]
        glance_step = pool.submit(glance)
        for future in keystone_steps:
            future.result()
        procs["keystone"] = _start(env_dir, keystone, root)
        glance_step.result()


# What a fresh set starts from: the databases after setup (bootstrap, test users, catalog) and
# the keys. Building it costs ~15 s of CPU in keystone-manage and glance-manage; copying it
# costs nothing. It is kept per recipe, like the NetBox base dump.
_TEMPLATE_FILES = ("keystone/keystone.db", "keystone/fernet-keys", "keystone/credential-keys",
                   *(f"glance-{region}/glance.db" for region in GLANCE_PORTS))


def _template() -> Path:
    return cache_dir() / "openstack" / f"initial-{_recipe()}"


def _save_template(root: Path, template: Path) -> None:
    tmp = template.with_name(template.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in _TEMPLATE_FILES:
        source, target = root / name, tmp / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:  # SQLite's backup: a consistent copy while the server holds the database open
            with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
                src.backup(dst)
    for old in template.parent.glob("initial-*"):  # those of older recipes
        if old != tmp:
            shutil.rmtree(old, ignore_errors=True)
    tmp.rename(template)


def _restore(template: Path, root: Path) -> None:
    for name in _TEMPLATE_FILES:
        if (template / name).is_dir():
            shutil.copytree(template / name, root / name, dirs_exist_ok=True)
        else:
            shutil.copy2(template / name, root / name)


def _manage(server: _Server, argv: list[str]) -> None:
    """A keystone-manage or glance-manage step; its failure names the log it wrote."""
    try:
        run(argv, env=server.env, timeout=600)
    except TestbedError as exc:
        raise _failure(server, f"setup step failed: {str(exc).strip()}") from None


def down() -> bool:
    """Stop every server the testbed started and remove their data; False if nothing was up."""
    with _locked():
        return _down()


def _down() -> bool:
    root = _root()
    servers = _servers(root)
    info, _recipe_of_it = _load()
    found = info is not None or root.exists()
    if info is not None:
        recorded = _servers(Path(info.data))
        _stop(*((pid, recorded[name]) for name, pid in info.pids.items() if name in recorded))
    # Servers whose pids were lost (a deleted state file): found by their process names.
    _stop(*_strays(servers))
    shutil.rmtree(root, ignore_errors=True)
    if info is not None and Path(info.data) != root:
        shutil.rmtree(info.data, ignore_errors=True)
    _state().unlink(missing_ok=True)
    return found


def application_credential(user: str, name: str, *, expires_at: datetime | None,
                           roles: Iterable[str] = ("member",)) -> dict[str, str | None]:
    """Create an application credential as the user (not the admin), in the user's project.

    A naive expires_at is taken as UTC, as Keystone does. Returns id, secret and expires_at
    as Keystone answered it (an ISO 8601 string without zone, UTC; None if it never expires).
    """
    if user not in USERS:
        raise TestbedError(f"no test user {user!r}: the users are {', '.join(sorted(USERS))}")
    entry = USERS[user]
    token, body = _token(user, entry["password"], entry["project"])
    when = None
    if expires_at is not None:
        if expires_at.tzinfo is not None:
            expires_at = expires_at.astimezone(timezone.utc).replace(tzinfo=None)
        when = expires_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fields = {"name": name, "expires_at": when, "roles": [{"name": role} for role in roles]}
    answer = _http("POST", f"{AUTH_URL}/users/{body['user']['id']}/application_credentials", token=token,
                   body={"application_credential": fields})[1]["application_credential"]
    return {"id": answer["id"], "secret": answer["secret"], "expires_at": answer["expires_at"]}


@contextlib.contextmanager
def glance_stopped(region: str) -> Iterator[None]:
    """Stop the region's Glance for the body of the with block, then start it again.

    Its data stays; the restarted server gets a new pid (recorded in the state file, not in
    OpenStack objects already handed out).
    """
    if region not in GLANCE_PORTS:
        raise TestbedError(f"no Glance in region {region!r}: the regions are {', '.join(GLANCE_PORTS)}")
    info, _recipe_of_it = _load()
    name = f"glance-{region}"
    if info is None or name not in info.pids:
        raise TestbedError("the OpenStack testbed is not up: call openstack.up() first")
    server = _servers(Path(info.data))[name]
    _stop((info.pids[name], server))
    try:
        yield
    finally:
        proc = _start(venv(), server, Path(info.data))
        _wait_healthy(server, proc)
        with _locked():
            current, _recipe_of_it = _load()
            if current is not None:
                current.pids[name] = proc.pid
                _save(current)
        log(f"{name} restarted")


def main(argv: list[str] | None = None) -> int:
    """python -m hepinfra_testbed.openstack up|down"""
    parser = argparse.ArgumentParser(prog="python -m hepinfra_testbed.openstack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down"])
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            print(up().as_json())
        else:
            down()
    except TestbedError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
