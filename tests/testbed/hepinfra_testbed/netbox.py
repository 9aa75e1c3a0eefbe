"""A real NetBox for the CMDB inventory tests and benchmark.

NetBox from PyPI (it needs Python >= 3.12, taken from pyenv or PATH) in a virtual
environment under the testbed cache, a private PostgreSQL cluster and a private Redis on
loopback, served by gunicorn. The first `migrate` of a NetBox version takes minutes, so the
migrated database (with the test users and tokens) is kept as a `pg_dump` in the cache and
restored for every run in about a second; data sets are snapshots the same way.

    python -m hepinfra_testbed.netbox up [--snapshot NAME]   # prints the URL and the token
    python -m hepinfra_testbed.netbox down
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import TestbedError, cache_dir, log, recipe_hash, reserve_service_ports, run, wait_for

NETBOX_VERSION = "4.7.3"
GUNICORN_VERSION = "26.2.0"
PG_PORT = 55432
REDIS_PORT = 56379
HTTP_PORT = 58080
DB_NAME = "netbox"
# Fixed test credentials: they only ever open a NetBox on loopback that the tests start.
ADMIN_TOKEN = "0123456789abcdef0123456789abcdef01234567"  # v1, full access
READER_TOKEN = "76543210fedcba9876543210fedcba9876543210"  # v1, may read devices only
V2_KEY = "hepinfratest"
V2_SECRET = "a" * 40
V2_TOKEN = f"nbt_{V2_KEY}.{V2_SECRET}"  # v2 bearer token of the admin
SECRET_KEY = "hepinfra-testbed-netbox-secret-key-0123456789abcdefghij"
PEPPER = "hepinfra-testbed-netbox-pepper-0123456789abcdefghijklmnop"

# Users and tokens, created once after migrate, kept in the base dump.
_BOOTSTRAP = f"""
from users.models import User, Token, ObjectPermission
from core.models import ObjectType
admin = User.objects.create_superuser('admin', 'admin@example.org', 'admin-password-1')
Token(version=1, user=admin, token={ADMIN_TOKEN!r}, description='testbed v1').save()
Token(version=2, user=admin, key={V2_KEY!r}, token={V2_SECRET!r}, description='testbed v2').save()
reader = User.objects.create_user('reader', 'reader@example.org', 'reader-password-1')
Token(version=1, user=reader, token={READER_TOKEN!r}, write_enabled=False, description='devices only').save()
perm = ObjectPermission.objects.create(name='read devices', actions=['view'])
perm.object_types.add(ObjectType.objects.get(app_label='dcim', model='device'))
perm.users.add(reader)
"""


@dataclass
class Instance:
    url: str
    token: str
    root: str
    pids: dict[str, int]

    def as_json(self) -> str:
        return json.dumps(asdict(self))


def python312() -> str:
    """A Python >= 3.12 for NetBox (the controller runs 3.11)."""
    explicit = os.environ.get("HEPINFRA_NETBOX_PYTHON")
    candidates = [explicit] if explicit else []
    candidates += sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.1[2-9]*/bin/python3")))
    candidates += [shutil.which("python3.12"), shutil.which("python3.13")]
    for candidate in candidates:
        # pyenv's shims exist for every version but run only the selected ones
        if candidate and "/shims/" not in candidate and os.access(candidate, os.X_OK):
            return candidate
    raise TestbedError("NetBox needs Python >= 3.12: install one (pyenv) or set HEPINFRA_NETBOX_PYTHON")


def venv() -> Path:
    """The NetBox virtual environment, installed once per version into the cache."""
    path = cache_dir() / "netbox" / f"venv-{NETBOX_VERSION}"
    marker = path / ".installed"
    if marker.exists():
        return path
    log(f"installing NetBox {NETBOX_VERSION} from PyPI (about 2 minutes, once)")
    shutil.rmtree(path, ignore_errors=True)
    run([python312(), "-m", "venv", str(path)])
    run([str(path / "bin/pip"), "install", "-q", f"netbox=={NETBOX_VERSION}", f"gunicorn=={GUNICORN_VERSION}"], timeout=1800)
    marker.touch()
    return path


def _work() -> Path:
    """Runtime files; outside the home directory, which the 'postgres' user cannot enter."""
    return Path(os.environ.get("HEPINFRA_NETBOX_STATE") or "/var/tmp/hepinfra-testbed-netbox")


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: the server and its tools run as 'postgres'."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def _pg_bin(name: str) -> str:
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(f"{directory}/{name}", os.X_OK):
            return f"{directory}/{name}"
    found = shutil.which(name)
    if not found:
        raise TestbedError(f"PostgreSQL's {name} is missing: run 'make bootstrap' (Debian package postgresql)")
    return found


def _configuration(root: Path) -> None:
    conf = root / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "__init__.py").touch()
    settings = {
        "ALLOWED_HOSTS": ["*"],
        "DATABASES": {"default": {"NAME": DB_NAME, "USER": "postgres", "PASSWORD": "", "HOST": "127.0.0.1", "PORT": str(PG_PORT), "CONN_MAX_AGE": 300}},
        "REDIS": {
            "tasks": {"HOST": "127.0.0.1", "PORT": REDIS_PORT, "DATABASE": 0, "SSL": False},
            "caching": {"HOST": "127.0.0.1", "PORT": REDIS_PORT, "DATABASE": 1, "SSL": False},
        },
        "SECRET_KEY": SECRET_KEY,
        "API_TOKEN_PEPPERS": {1: PEPPER},
        "ISOLATED_DEPLOYMENT": True,
        "CENSUS_REPORTING_ENABLED": False,
        "RELEASE_CHECK_URL": None,
        "MAX_PAGE_SIZE": 1000,
    }
    text = "\n".join(f"{key} = {value!r}" for key, value in settings.items())
    (conf / "configuration.py").write_text(text + "\n")


def _env(root: Path) -> dict[str, str]:
    return {"NETBOX_ROOT": str(root), "PYTHONDONTWRITEBYTECODE": "1"}


def _postgres_up(work: Path) -> int:
    data = work / "pgdata"
    socket_dir = work / "pgsock"
    if not (data / "PG_VERSION").exists():
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        socket_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(work, "postgres")
            shutil.chown(data, "postgres")
            shutil.chown(socket_dir, "postgres")
        run(_as_postgres([_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]))
    # A throwaway test database: durability settings off make migrate and restore faster.
    options = f"-p {PG_PORT} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-l", str(work / "postgres.log"), "-o", options, "-w", "start"]))
    return int((data / "postmaster.pid").read_text().split()[0])


def _redis_up(work: Path) -> int:
    pidfile = work / "redis.pid"
    run(["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "yes", "--pidfile", str(pidfile), "--dir", str(work), "--logfile", str(work / "redis.log")])
    wait_for(pidfile.exists, 10, 0.1, "redis pid file")
    return int(pidfile.read_text())


def _psql(sql: str, database: str = "postgres") -> None:
    run(_as_postgres(["psql", "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql]))


def base_dump_path() -> Path:
    """Where the migrated database of this NetBox version and these users is kept."""
    return cache_dir() / "netbox" / f"netbox-{NETBOX_VERSION}-{recipe_hash(NETBOX_VERSION, _BOOTSTRAP)}.dump"


def base_dump() -> Path:
    """The migrated database with the test users and tokens, built once per NetBox version."""
    dump = base_dump_path()
    if dump.exists():
        return dump
    env = venv()
    work = _work()
    root = work / "root"
    _configuration(root)
    started = time.monotonic()
    log(f"migrating a new NetBox {NETBOX_VERSION} database (several minutes, once per version)")
    _psql(f"DROP DATABASE IF EXISTS {DB_NAME}")
    _psql(f"CREATE DATABASE {DB_NAME}")
    run([str(env / "bin/netbox"), "migrate", "--no-input"], env=_env(root), timeout=3600)
    run([str(env / "bin/netbox"), "shell", "-c", _BOOTSTRAP], env=_env(root), timeout=600)
    snapshot(dump)
    log(f"migrated in {time.monotonic() - started:.0f} s; kept as {dump.name}")
    return dump


def snapshot(path: Path) -> Path:
    """Save the current NetBox database as a dump file."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        subprocess.run(_as_postgres(["pg_dump", "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres", "-Fc", "-Z", "1", DB_NAME]), stdout=out, check=True)
    tmp.rename(path)
    return path


def restore(path: Path) -> None:
    """Replace the NetBox database by a dump and drop NetBox's cache (it would be stale)."""
    _psql(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    _psql(f"CREATE DATABASE {DB_NAME}")
    with open(path, "rb") as dump:  # read here: the dump may sit where 'postgres' cannot read
        proc = subprocess.run(_as_postgres(["pg_restore", "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres",
                                            "-d", DB_NAME, "--no-owner"]), stdin=dump, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise TestbedError(f"pg_restore of {path.name} failed: {proc.stderr.strip()[-1000:]}")
    run(["redis-cli", "-p", str(REDIS_PORT), "FLUSHALL"])


def http_up(root: Path, workers: int = 2) -> int:
    """Serve NetBox with gunicorn on loopback; returns its pid once the API answers."""
    env = dict(os.environ)
    env.update(_env(root))
    logfile = open(root.parent / "gunicorn.log", "ab")
    proc = subprocess.Popen(
        [str(venv() / "bin/gunicorn"), "--bind", f"127.0.0.1:{HTTP_PORT}", "--workers", str(workers), "--threads", "2",
         "--timeout", "300", "--keep-alive", "75", "--no-control-socket", "--pythonpath", str(root),
         "netbox.wsgi:application"],
        env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
    )

    def answers_or_exited() -> bool:
        if proc.poll() is not None:
            return True  # reported below at once, not after the timeout
        request = urllib.request.Request(f"http://127.0.0.1:{HTTP_PORT}/api/status/", headers={"Authorization": f"Token {ADMIN_TOKEN}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200

    wait_for(answers_or_exited, 120, 0.5, "NetBox API")
    if proc.poll() is not None:
        raise TestbedError(f"gunicorn exited ({proc.returncode}); see {root.parent / 'gunicorn.log'}")
    (root.parent / "gunicorn.pid").write_text(str(proc.pid))
    return proc.pid


def http_down() -> None:
    """Stop gunicorn at once (SIGQUIT; a graceful TERM waits for idle keep-alive clients)."""
    pidfile = _work() / "gunicorn.pid"
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    for sig, wait in ((signal.SIGQUIT, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        try:
            wait_for(lambda: not _alive(pid), wait, 0.2, "gunicorn to stop")
            break
        except TestbedError:
            if sig == signal.SIGKILL:
                raise
    pidfile.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours counts as gone
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def up(snapshot_path: Path | None = None) -> Instance:
    """Start PostgreSQL, Redis and NetBox with the given snapshot (or the empty base)."""
    reserve_service_ports()
    down()
    work = _work()
    work.mkdir(parents=True, exist_ok=True)
    root = work / "root"
    _configuration(root)
    pids = {"postgres": _postgres_up(work), "redis": _redis_up(work)}
    restore(snapshot_path or base_dump())
    pids["gunicorn"] = http_up(root)
    instance = Instance(url=f"http://127.0.0.1:{HTTP_PORT}", token=ADMIN_TOKEN, root=str(root), pids=pids)
    (work / "instance.json").write_text(instance.as_json())
    return instance


def down() -> bool:
    """Stop everything `up` started (safe to call when nothing runs); whether anything ran."""
    work = _work()
    running = any((work / name).exists() for name in ("gunicorn.pid", "redis.pid", "pgdata/postmaster.pid"))
    http_down()
    if (work / "redis.pid").exists():
        run(["redis-cli", "-p", str(REDIS_PORT), "shutdown", "nosave"], check=False)
        (work / "redis.pid").unlink(missing_ok=True)
    if (work / "pgdata" / "postmaster.pid").exists():
        run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(work / "pgdata"), "-m", "fast", "-w", "stop"]), check=False)
    return running


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hepinfra_testbed.netbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start NetBox (from the base dump or a snapshot file)")
    p_up.add_argument("--snapshot", type=Path)
    sub.add_parser("down", help="stop NetBox, Redis and PostgreSQL")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            print(up(args.snapshot).as_json())
        else:
            down()
    except TestbedError as exc:
        print(f"netbox: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
