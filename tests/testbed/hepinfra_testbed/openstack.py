"""OpenStack for the image and worker tests: a real Keystone, two real Glance API servers and, on request, compute.

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

`up(compute=True)` adds a compute tier in RegionOne, of the same OpenStack series and venv:
Placement, Nova (API, conductor, scheduler and one nova-compute with the fake driver: servers
go ACTIVE, no guest runs) and Neutron's API (ML2 without agents; a mechanism driver of the
testbed binds every port), on a private PostgreSQL cluster and a private RabbitMQ, all on
loopback. It brings the flavors in FLAVORS and a network NETWORK shared with every project;
set_quota, reset_quota and force_error do what a test user may not. Its initial state (the
migrated databases with the compute node, flavors and network) is cached too, as a base
backup of the PostgreSQL cluster.

    python -m hepinfra_testbed.openstack up [--compute]   # prints auth URL, passwords, pids as JSON
    python -m hepinfra_testbed.openstack down
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
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
import urllib.parse
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from .common import TestbedError, cache_dir, log, recipe_hash, reserve_service_ports, run, state_dir, wait_for

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

# The compute tier (up(compute=True)), in one region.
COMPUTE_REGION = "RegionOne"
PLACEMENT_PORT = 58510
NOVA_PORT = 58511
NEUTRON_PORT = 58512
POSTGRES_PORT = 58520
RABBIT_PORT = 58521  # AMQP
RABBIT_DIST_PORT = 58522  # Erlang distribution
EPMD_PORT = 58523  # Erlang port mapper
PLACEMENT_URL = f"http://127.0.0.1:{PLACEMENT_PORT}"
NOVA_URL = f"http://127.0.0.1:{NOVA_PORT}/v2.1"
NEUTRON_URL = f"http://127.0.0.1:{NEUTRON_PORT}"
SERVICE_PASSWORDS = {
    "placement": "hepinfra-testbed-placement-0123456789",
    "nova": "hepinfra-testbed-nova-0123456789",
    "neutron": "hepinfra-testbed-neutron-0123456789",
}
RABBIT_USER = "hepinfra"
RABBIT_PASSWORD = "hepinfra-testbed-rabbit-0123456789"
COMPUTE_HOST = "hepinfra-tb-compute"  # nova-compute's host and node name
# What nova.virt.fake offers (FakeDriver.vcpus, memory_mb, local_gb); at allocation ratio 1.0
# and no reserve, Placement offers exactly this: room for hundreds of w1.large servers.
CAPACITY = {"vcpus": 1000, "ram": 800000, "disk": 600000}
FLAVORS = {  # vCPUs, RAM in MiB, disk in GB; public
    "w1.small": {"vcpus": 1, "ram": 1024, "disk": 10},
    "w1.medium": {"vcpus": 2, "ram": 4096, "disk": 20},
    "w1.large": {"vcpus": 4, "ram": 8192, "disk": 40},
}
NETWORK = "private"  # shared with every project, made by the admin
SUBNET = "private-subnet"
SUBNET_CIDR = "10.42.0.0/22"  # 1,021 addresses
# Every project's compute quota until set_quota changes it (reset_quota returns to it): room
# for 200 w1.small servers, Nova's own defaults (10 instances, 20 cores) would stop at 10.
DEFAULT_QUOTA = {"instances": 200, "cores": 800, "ram": 819200}
# The migration Neutron 29 runs after ad80a9f07c5c converts the tags table to a MySQL
# collation: SQL that PostgreSQL rejects. It is stamped as done instead.
_NEUTRON_MYSQL_ONLY = ("ad80a9f07c5c", "d553edeb540f")

# oslo.config parses sys.argv when the application configures itself: under gunicorn that is
# gunicorn's command line, which it rejects. The WSGI module is therefore loaded through a
# shim that clears argv first.
_SHIM = '''"""Loads {app} for gunicorn with an empty command line (oslo.config would parse gunicorn's)."""
import sys

sys.argv = sys.argv[:1]
from {app} import application  # noqa: E402  pylint: disable=wrong-import-position,unused-import
'''
# Neutron's Port gains its port_forwardings relationship only when SQLAlchemy configures the
# mappers, which it does lazily at a process's first query; a worker whose first request lists
# ports reads the attribute before that and answers 500 (Nova then answers 500 for a server's
# show or create, once per fresh worker). Configuring them as the worker loads the app avoids it.
_NEUTRON_MAPPERS = """
from sqlalchemy import orm  # noqa: E402  pylint: disable=wrong-import-position

orm.configure_mappers()
"""
_SHIMS = {"keystone": "keystone.wsgi.api", "glance": "glance.wsgi.api", "placement": "placement.wsgi.api",
          "nova": "nova.wsgi.osapi_compute", "neutron": "neutron.wsgi.api"}

# Neutron without agents binds no port, and Nova gives up on a server whose port stays
# unbound: this ML2 mechanism driver binds every port on any host at once. ML2 finds drivers
# by entry point, hence the distribution metadata next to it.
_BIND_ALL = '''"""An ML2 mechanism driver that binds every port on any host: no agents, no dataplane."""
from neutron_lib import constants
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api


class BindAll(api.MechanismDriver):
    """Binds each port to the first segment offered, as an OVS port, and marks it ACTIVE."""

    def initialize(self):
        pass

    def bind_port(self, context):
        for segment in context.segments_to_bind:
            context.set_binding(segment[api.ID], portbindings.VIF_TYPE_OVS, {portbindings.CAP_PORT_FILTER: True},
                                status=constants.PORT_STATUS_ACTIVE)
            return
'''
_BIND_ALL_ENTRY_POINTS = """[neutron.ml2.mechanism_drivers]
hepinfra_tb_bind_all = hepinfra_tb_bind_all:BindAll
"""
# Every process of the set carries this variable (its value: the set's data directory), also
# the ones that leave their parent's session (PostgreSQL's backends, Erlang's helpers): `down`
# finds them all by it.
_TAG = "HEPINFRA_TESTBED_OPENSTACK"


@dataclass
class OpenStack:
    """A running Keystone with a Glance per region, the test users, and the compute tier if asked for."""

    auth_url: str
    admin_password: str
    users: dict[str, dict[str, str]]
    pids: dict[str, int]
    data: str
    compute: dict[str, Any] = field(default_factory=dict)  # compute_info() when the tier runs, else empty

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

    def admin_auth(self) -> dict[str, str]:
        """openstacksdk's `auth` for the cloud admin (project admin)."""
        return {"auth_url": self.auth_url, "username": "admin", "password": self.admin_password,
                "project_name": "admin", "user_domain_name": DOMAIN, "project_domain_name": DOMAIN}

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


def compute_info() -> dict[str, Any]:
    """What the compute tier offers: region, endpoints, flavors, network, node capacity, default quota."""
    return {
        "region": COMPUTE_REGION,
        "compute_url": NOVA_URL,
        "network_url": NEUTRON_URL,
        "placement_url": PLACEMENT_URL,
        "flavors": {name: dict(spec) for name, spec in FLAVORS.items()},
        "network": NETWORK,
        "subnet": SUBNET,
        "cidr": SUBNET_CIDR,
        "host": COMPUTE_HOST,
        "capacity": dict(CAPACITY),
        "default_quota": dict(DEFAULT_QUOTA),
    }


@dataclass
class _Server:  # pylint: disable=too-many-instance-attributes
    """How one server of the set is started and checked."""

    name: str  # "keystone", "glance-RegionOne", "nova-compute", ...
    port: int  # 0: it listens on none
    health_url: str  # http: or postgresql:; "": a server with a port is healthy when it accepts connections there
    log: Path
    shim: str  # module gunicorn loads; "" for a server that is a command of its own (argv)
    env: dict[str, str]
    argv: list[str] = field(default_factory=list)
    marker: str = ""  # of a server with argv: text only its main process has in its command line
    stop_signal: int = signal.SIGTERM  # the first signal `down` sends (then SIGKILL)
    workers: int = 1  # of a gunicorn


# -- the servers' virtual environment ----------------------------------------------------------


def _venv_path() -> Path:
    return cache_dir() / "openstack" / f"venv-{recipe_hash(REQUIREMENTS.read_text())}"


def venv() -> Path:
    """The virtual environment with the OpenStack servers and gunicorn, installed once into the cache."""
    path = _venv_path()
    marker = path / ".installed"
    # A venv's python is a link to the interpreter that made it: gone if that one was removed.
    if marker.exists() and os.access(path / "bin" / "python", os.X_OK):
        return path
    log("installing Keystone, Glance, Placement, Nova and Neutron from PyPI into the testbed cache "
        "(about 3 minutes, once)")
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


# -- the compute tier's Debian packages ----------------------------------------------------------

_HOST_PACKAGES = ("postgresql", "rabbitmq-server")


def _host_packages() -> None:
    """PostgreSQL and RabbitMQ from Debian, installed if missing (their services stay stopped)."""
    missing = [name for name in _HOST_PACKAGES
               if not run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", name], check=False).stdout.startswith("ii")]
    if not missing:
        return
    if os.geteuid() != 0:
        raise TestbedError(f"the compute tier needs the Debian packages {' '.join(missing)}: install them as root")
    log(f"installing {' '.join(missing)} from Debian (once)")
    apt_env = {"DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], env=apt_env, timeout=600)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=apt_env, timeout=1200)


def _pg_bin(name: str) -> str:
    """A PostgreSQL program of the newest installed major version (they are not on PATH)."""
    directories = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda path: int(re.sub(r"\D", "", Path(path).parent.name) or 0), reverse=True)
    for directory in directories:
        if os.access(f"{directory}/{name}", os.X_OK):
            return f"{directory}/{name}"
    return shutil.which(name) or name


def _as_postgres_user() -> list[str]:
    """A command prefix that makes PostgreSQL, which refuses to run as root, run from a root shell.

    A user namespace maps root to the postgres user's id: the server believes it is not root,
    and its files, under the testbed cache in root's home, stay root's on the host (the real
    postgres user could not even enter that directory).
    """
    if os.geteuid() != 0:
        return []
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        entry = pwd.getpwnam("nobody")
    return ["unshare", "--user", f"--map-user={entry.pw_uid}", f"--map-group={entry.pw_gid}"]


# RabbitMQ's own launcher, which runs as its caller. Never Debian's /usr/sbin/rabbitmq-server:
# that one switches to the rabbitmq user, who may not write the data under root's home.
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


# -- configuration -------------------------------------------------------------------------------


def _root() -> Path:
    return state_dir() / "openstack"


def _state() -> Path:
    return state_dir() / "openstack.json"


def _recipe(compute: bool = False) -> str:
    """What a running set was made from: a set made by another recipe is not reused."""
    base = recipe_hash(REQUIREMENTS.read_text(), KEYSTONE_PORT, GLANCE_PORTS, USERS, ADMIN_PASSWORD, GLANCE_PASSWORD,
                       _keystone_conf, _glance_conf, _setup, _identity, _gunicorn, _SHIM, _NEUTRON_MAPPERS)
    if not compute:
        return base
    return recipe_hash(base, COMPUTE_REGION, PLACEMENT_PORT, NOVA_PORT, NEUTRON_PORT, POSTGRES_PORT, RABBIT_PORT,
                       SERVICE_PASSWORDS, RABBIT_PASSWORD, COMPUTE_HOST, FLAVORS, NETWORK, SUBNET_CIDR, DEFAULT_QUOTA,
                       _NEUTRON_MYSQL_ONLY, _BIND_ALL, _placement_conf, _nova_conf, _neutron_conf, _rabbitmq_conf,
                       _compute_servers, _compute_databases, _compute_apis, _compute_ready, _save_template)


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


def _authtoken(user: str, password: str) -> str:
    """keystonemiddleware's section for a service user (role service checked on service tokens)."""
    return f"""[keystone_authtoken]
auth_type = password
auth_url = {AUTH_URL}
www_authenticate_uri = {AUTH_URL}
username = {user}
password = {password}
project_name = service
user_domain_name = {DOMAIN}
project_domain_name = {DOMAIN}
service_token_roles_required = true
"""


def _service_client(section: str, user: str) -> str:
    """A keystoneauth section through which one service calls another as `user`."""
    return f"""[{section}]
auth_type = password
auth_url = {AUTH_URL}
username = {user}
password = {SERVICE_PASSWORDS[user]}
project_name = service
user_domain_name = {DOMAIN}
project_domain_name = {DOMAIN}
region_name = {COMPUTE_REGION}
"""


def _database(name: str) -> str:
    return f"postgresql+psycopg2://postgres@127.0.0.1:{POSTGRES_PORT}/{name}"


def _transport_url() -> str:
    return f"rabbit://{RABBIT_USER}:{RABBIT_PASSWORD}@127.0.0.1:{RABBIT_PORT}/"


def _compute_confs(root: Path, env_dir: Path) -> None:
    """Configuration of Placement, Nova, Neutron, RabbitMQ and the port-binding driver."""
    _placement_conf(root)
    _nova_conf(root, env_dir)
    _neutron_conf(root, env_dir)
    _rabbitmq_conf(root)


def _placement_conf(root: Path) -> None:
    placement = root / "placement"
    placement.mkdir(parents=True)
    (placement / "placement.conf").write_text(f"""[api]
auth_strategy = keystone

[placement_database]
connection = {_database('placement')}

{_authtoken('placement', SERVICE_PASSWORDS['placement'])}""")


def _nova_conf(root: Path, env_dir: Path) -> None:
    nova = root / "nova"
    for sub in ("state", "instances", "locks"):
        (nova / sub).mkdir(parents=True)
    shutil.copy(env_dir / "etc" / "nova" / "api-paste.ini", nova / "api-paste.ini")
    quota = "\n".join(f"{key} = {value}" for key, value in DEFAULT_QUOTA.items())
    (nova / "nova.conf").write_text(f"""[DEFAULT]
host = {COMPUTE_HOST}
my_ip = 127.0.0.1
compute_driver = fake.FakeDriverWithoutFakeNodes
transport_url = {_transport_url()}
state_path = {nova / 'state'}
instances_path = {nova / 'instances'}
# Heartbeats every 2 s (not 10): `up` waits for one newer than the services' start.
report_interval = 2
# The fake node's capacity as it is (see CAPACITY).
cpu_allocation_ratio = 1.0
ram_allocation_ratio = 1.0
disk_allocation_ratio = 1.0
reserved_host_memory_mb = 0
reserved_host_disk_mb = 0
# In threading mode Nova runs builds and snapshots under one limit (and warns when they differ).
max_concurrent_builds = 10
max_concurrent_snapshots = 10

[api_database]
connection = {_database('nova_api')}

[database]
connection = {_database('nova')}

[wsgi]
api_paste_config = {nova / 'api-paste.ini'}

[conductor]
workers = 1

[scheduler]
workers = 1
# Hosts are mapped to the cell once, when the initial state is built.
discover_hosts_in_cells_interval = -1

[quota]
{quota}

[glance]
region_name = {COMPUTE_REGION}

[vnc]
enabled = false

[oslo_concurrency]
lock_path = {nova / 'locks'}

{_authtoken('nova', SERVICE_PASSWORDS['nova'])}
{_service_client('placement', 'nova')}
{_service_client('neutron', 'nova')}
# With a service token next to the user's: Neutron lets only a service (role service) delete
# a server's port, and Nova deletes it on the user's behalf.
{_service_client('service_user', 'nova')}send_service_user_token = true
""")


def _neutron_conf(root: Path, env_dir: Path) -> None:
    neutron = root / "neutron"
    for sub in ("state", "locks"):
        (neutron / sub).mkdir(parents=True)
    shutil.copy(env_dir / "etc" / "neutron" / "api-paste.ini", neutron / "api-paste.ini")
    (neutron / "neutron.conf").write_text(f"""[DEFAULT]
core_plugin = ml2
# Routers and floating IPs as API objects (no agent implements them); Nova looks up floating IPs.
service_plugins = router
auth_strategy = keystone
transport_url = {_transport_url()}
api_paste_config = {neutron / 'api-paste.ini'}
state_path = {neutron / 'state'}
# No agents and no dataplane: nobody to notify.
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
dhcp_agent_notification = false

[database]
connection = {_database('neutron')}

# Nova counts a project's ports before each server unless ports are unlimited: with a quota,
# every create lists all of them.
[quotas]
quota_port = -1

[oslo_concurrency]
lock_path = {neutron / 'locks'}

{_authtoken('neutron', SERVICE_PASSWORDS['neutron'])}""")
    (neutron / "ml2_conf.ini").write_text("""[ml2]
type_drivers = local
tenant_network_types = local
mechanism_drivers = hepinfra_tb_bind_all
extension_drivers = port_security
""")
    (root / "wsgi" / "hepinfra_tb_bind_all.py").write_text(_BIND_ALL)
    dist_info = root / "wsgi" / "hepinfra_tb_bind_all-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: hepinfra-tb-bind-all\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(_BIND_ALL_ENTRY_POINTS)


def _rabbitmq_conf(root: Path) -> None:
    rabbitmq = root / "rabbitmq"
    rabbitmq.mkdir()
    (rabbitmq / "rabbitmq.conf").write_text(f"""listeners.tcp.default = 127.0.0.1:{RABBIT_PORT}
default_user = {RABBIT_USER}
default_pass = {RABBIT_PASSWORD}
""")
    (rabbitmq / "enabled_plugins").write_text("[].\n")
    (rabbitmq / "rabbitmq-env.conf").write_text("")  # instead of /etc/rabbitmq/rabbitmq-env.conf


def _server_env(root: Path, extra: dict[str, str]) -> dict[str, str]:
    """Variables for the servers and their tools (merged into this process's environment)."""
    return {
        # The tests' PYTHONPATH (the testbed package) means nothing to the servers' venv.
        "PYTHONPATH": "",
        # Deprecation warnings (eventlet's, at every start) would bury the errors in the logs.
        "PYTHONWARNINGS": "ignore",
        # The servers talk to each other on loopback: never through a proxy.
        "no_proxy": "127.0.0.1,localhost",
        "NO_PROXY": "127.0.0.1,localhost",
        _TAG: str(root),
        **extra,
    }


def _servers(root: Path, *, compute: bool) -> dict[str, _Server]:
    servers = {"keystone": _Server(
        name="keystone", port=KEYSTONE_PORT, health_url=AUTH_URL, log=root / "keystone" / "keystone.log",
        shim="hepinfra_tb_keystone_wsgi",
        env=_server_env(root, {"OS_KEYSTONE_CONFIG_FILES": str(root / "keystone" / "keystone.conf")}),
    )}
    for region, port in GLANCE_PORTS.items():
        directory = root / f"glance-{region}"
        servers[f"glance-{region}"] = _Server(
            name=f"glance-{region}", port=port, health_url=f"http://127.0.0.1:{port}/healthcheck",
            log=directory / "glance-api.log", shim="hepinfra_tb_glance_wsgi",
            env=_server_env(root, {"OS_GLANCE_CONFIG_DIR": str(directory)}),
        )
    if compute:
        servers.update(_compute_servers(root))
    return servers


def _compute_servers(root: Path) -> dict[str, _Server]:
    data = root / "postgres" / "data"
    rabbitmq = root / "rabbitmq"
    servers = {
        "postgres": _Server(
            name="postgres", port=POSTGRES_PORT, health_url=f"postgresql://postgres@127.0.0.1:{POSTGRES_PORT}/postgres",
            log=root / "postgres" / "postgres.log", shim="",
            env=_server_env(root, {}),
            # A throwaway cluster: no durability, no Unix socket (loopback TCP only).
            argv=[*_as_postgres_user(), _pg_bin("postgres"), "-D", str(data), "-p", str(POSTGRES_PORT),
                  "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "fsync=off",
                  "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=300"],
            marker=f"-D {data} ", stop_signal=signal.SIGINT,  # SIGTERM would wait for every client to leave
        ),
        # The port mapper is started first, on its own port: RabbitMQ would start a shared one on 4369.
        "epmd": _Server(
            name="epmd", port=EPMD_PORT, health_url="", log=rabbitmq / "epmd.log", shim="", env=_server_env(root, {}),
            argv=["epmd", "-port", str(EPMD_PORT), "-address", "127.0.0.1"], marker=f"epmd -port {EPMD_PORT} ",
        ),
        "rabbitmq": _Server(
            name="rabbitmq", port=RABBIT_PORT, health_url="", log=rabbitmq / "rabbitmq.log", shim="",
            env=_server_env(root, {
                "HOME": str(rabbitmq),  # its Erlang cookie
                "RABBITMQ_CONF_ENV_FILE": str(rabbitmq / "rabbitmq-env.conf"),
                "RABBITMQ_CONFIG_FILE": str(rabbitmq / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(rabbitmq / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(rabbitmq / "enabled_plugins"),
                "RABBITMQ_PLUGINS_EXPAND_DIR": str(rabbitmq / "plugins"),
                "RABBITMQ_MNESIA_BASE": str(rabbitmq / "mnesia"),
                "RABBITMQ_LOG_BASE": str(rabbitmq / "log"),
                "RABBITMQ_PID_FILE": str(rabbitmq / "rabbitmq.pid"),
                "RABBITMQ_NODENAME": "hepinfra-tb@localhost",
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(RABBIT_PORT),
                "RABBITMQ_DIST_PORT": str(RABBIT_DIST_PORT),
                "ERL_EPMD_PORT": str(EPMD_PORT),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                # The distribution port listens on every address unless told otherwise.
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            }),
            argv=[RABBITMQ_SERVER], marker=f"-home {rabbitmq} ",
        ),
        "placement": _Server(
            name="placement", port=PLACEMENT_PORT, health_url=PLACEMENT_URL, log=root / "placement" / "placement.log",
            shim="hepinfra_tb_placement_wsgi",
            env=_server_env(root, {"OS_PLACEMENT_CONFIG_DIR": str(root / "placement")}),
        ),
        "nova-api": _Server(
            name="nova-api", port=NOVA_PORT, health_url=f"http://127.0.0.1:{NOVA_PORT}/", log=root / "nova" / "nova-api.log",
            shim="hepinfra_tb_nova_wsgi", env=_server_env(root, {"OS_NOVA_CONFIG_DIR": str(root / "nova")}),
        ),
        "neutron": _Server(
            name="neutron", port=NEUTRON_PORT, health_url=f"{NEUTRON_URL}/healthcheck",
            log=root / "neutron" / "neutron-api.log", shim="hepinfra_tb_neutron_wsgi", workers=2,
            env=_server_env(root, {"OS_NEUTRON_CONFIG_DIR": str(root / "neutron"),
                                   "OS_NEUTRON_CONFIG_FILES": "neutron.conf;ml2_conf.ini"}),
        ),
    }
    nova_conf = root / "nova" / "nova.conf"
    for binary in ("nova-conductor", "nova-scheduler", "nova-compute"):
        servers[binary] = _Server(
            name=binary, port=0, health_url="", log=root / "nova" / f"{binary}.log", shim="", env=_server_env(root, {}),
            argv=[str(_venv_path() / "bin" / binary), "--config-file", str(nova_conf)],
            marker=f"{binary} --config-file {nova_conf}",
        )
    return servers


# -- processes -----------------------------------------------------------------------------------


def _gunicorn(env_dir: Path, server: _Server, shim_dir: Path) -> list[str]:
    return [
        str(env_dir / "bin" / "gunicorn"),
        "--bind", f"127.0.0.1:{server.port}",
        # One worker: Keystone's token cache is in process memory, and SQLite wants one writer.
        # Neutron has two: Nova's reads should not queue behind its slow port writes.
        "--workers", str(server.workers),
        "--timeout", "300",  # a sync worker serves an image upload in one request
        "--graceful-timeout", "3",
        # Nova asks Neutron for the ports of many servers in one URL (5.8 KB for 120 servers);
        # gunicorn's default limit is 4 KB, Neutron's own client splits only beyond 8 KB.
        "--limit-request-line", "0",
        # Otherwise every gunicorn here shares ~/.gunicorn/gunicorn.ctl.
        "--no-control-socket",
        "--access-logfile", "-",
        # gunicorn's default format, and the seconds the request took.
        "--access-logformat", '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(L)s',
        "--name", _proc_name(server),
        "--pythonpath", str(shim_dir),
        f"{server.shim}:application",
    ]


def _start(env_dir: Path, server: _Server, root: Path) -> subprocess.Popen[bytes]:
    """Start one server in a session of its own; its output goes to the server's log."""
    full_env = dict(os.environ)
    full_env.update(server.env)
    argv = _gunicorn(env_dir, server, root / "wsgi") if server.shim else server.argv
    server.log.parent.mkdir(parents=True, exist_ok=True)
    with open(server.log, "ab") as log_file:
        return subprocess.Popen(  # pylint: disable=consider-using-with
            argv, env=full_env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
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


def _answering(server: _Server) -> bool:
    """Whether the server serves: its health URL answers, or its port accepts connections."""
    if server.health_url.startswith("postgresql:"):
        # Not the port: a cluster in recovery (from a base backup) listens and refuses queries.
        return run([_pg_bin("pg_isready"), "-q", "-d", server.health_url], check=False).returncode == 0
    if server.health_url:
        return _answers(server.health_url)
    if server.port:
        with socket.socket() as sock:
            sock.settimeout(2)
            return sock.connect_ex(("127.0.0.1", server.port)) == 0
    return True  # a server without a port serves once it runs (Nova's own readiness: _wait_heartbeats)


def _wait_healthy(server: _Server, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the server answers its health URL; fail at once when gunicorn exits."""

    def answers_or_exited() -> bool:
        return proc.poll() is not None or _answering(server)

    try:
        wait_for(answers_or_exited, START_TIMEOUT, 0.2, f"{server.name} on port {server.port}")
    except TestbedError as exc:
        raise _failure(server, f"did not answer on {server.health_url or server.port} ({exc})") from None
    if proc.poll() is not None:
        raise _failure(server, f"exited at start (status {proc.returncode})")


def _processes() -> Iterator[tuple[int, str]]:
    """(pid, /proc/pid/stat after the command name) of every process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which may hold spaces: state ppid pgrp ...
        yield int(entry.name), stat.rsplit(")", 1)[1]


def _members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of a process group; reaps the leader if it is our child."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    members = []
    for pid, fields in _processes():
        state, _ppid, group = fields.split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(pid)
    return members


def _proc_name(server: _Server) -> str:
    """gunicorn's process name for the server: in the command line, or the title gunicorn sets."""
    return f"hepinfra-tb-{server.name}@127.0.0.1:{server.port}"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
    except OSError:
        return ""


def _is_server(cmdline: str, server: _Server) -> bool:
    """Whether a command line is one of the server's processes.

    gunicorn retitles its processes ("gunicorn: master [<name>]") through setproctitle, which
    is in the venv: the original command line is gone, the name given by --name stays. The
    other servers keep their marker in the command line (oslo.service's title repeats it).
    """
    if server.shim:
        return "gunicorn" in cmdline and _proc_name(server) in cmdline
    return bool(server.marker) and server.marker in cmdline


def _ours(pid: int, server: _Server) -> bool:
    """Whether pid is a process of this server (a recorded pid may have been reused)."""
    return _is_server(_cmdline(pid), server)


def _stop(*servers: tuple[int, _Server]) -> None:
    """Stop servers, each a whole process group: its stop signal, then SIGKILL after a short wait.

    The groups, not only the masters: workers outlive a master killed by SIGKILL. A recorded
    pid whose group holds no process of that server any more is left alone.
    """
    groups = {pid: server for pid, server in servers if any(_ours(member, server) for member in _members(pid))}
    for final in (False, True):
        for pid, server in groups.items():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL if final else server.stop_signal)
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
    for pid, _fields in _processes():
        cmdline = _cmdline(pid)
        for server in servers.values():
            if cmdline and _is_server(cmdline, server):
                with contextlib.suppress(OSError):  # a worker too: its master may be gone
                    found[os.getpgid(pid)] = server
    return list(found.items())


def processes() -> list[int]:
    """Every process of the OpenStack testbed now running (none after `down`).

    The servers' processes (found by their names, as `down` finds them), their descendants
    (PostgreSQL's backends and Erlang's port programs leave their server's session), and
    whatever still carries the set's variable in its environment (orphans of a stopped
    server; a process that retitles itself overwrites its environment, hence not only that).
    """
    table = {pid: fields.split()[:3] for pid, fields in _processes()}
    live = {pid for pid, (state, _ppid, _pgid) in table.items() if state != "Z" and pid != os.getpid()}
    groups = {pgid for pgid, _server in _strays(_servers(_root(), compute=True))}
    found = {pid for pid in live if int(table[pid][2]) in groups}
    tag = f"{_TAG}={_root()}".encode()
    for pid in live - found:
        with contextlib.suppress(OSError):
            if tag in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.add(pid)
    children: dict[int, list[int]] = {}
    for pid in live:
        children.setdefault(int(table[pid][1]), []).append(pid)
    pending = list(found)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return sorted(found)


def _stop_leftovers() -> None:
    """SIGKILL what `_stop` left behind of the set (helpers in sessions of their own)."""
    leftovers = processes()
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if leftovers:
        with contextlib.suppress(TestbedError):
            wait_for(lambda: not processes(), 10, 0.2, "the last processes of the OpenStack testbed to exit")


def _resident_mib() -> int:
    """Memory the set uses (proportional set size, shared pages split between their users)."""
    total = 0
    for pid in processes():
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total // 1024


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _check_ports(servers: dict[str, _Server]) -> None:
    ports = {server.port: server.name for server in servers.values() if server.port}
    if "rabbitmq" in servers:
        ports[RABBIT_DIST_PORT] = "rabbitmq"
    for port, name in ports.items():
        if not _port_free(port):
            who = run(["ss", "-Hltnp", f"sport = :{port}"], check=False).stdout.strip() \
                if shutil.which("ss") else ""
            raise TestbedError(
                f"port {port} (for {name}) is in use by another program: stop it, or change the "
                f"ports at the top of hepinfra_testbed/openstack.py" + (f"\n    {who}" if who else ""))


# -- the APIs, by plain REST (the testbed needs no client library) -------------------------------

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


def _identity(compute: bool) -> None:  # pylint: disable=too-many-locals
    """Projects, users, roles, the second region and the services' endpoints, as the admin."""
    admin, _body = _token("admin", ADMIN_PASSWORD, "admin")

    def create(kind: str, plural: str, fields: dict[str, Any]) -> str:
        return _http("POST", f"{AUTH_URL}/{plural}", token=admin, body={kind: fields})[1][kind]["id"]

    roles = {role["name"]: role["id"] for role in _http("GET", f"{AUTH_URL}/roles", token=admin)[1]["roles"]}
    for name in ("member", "service"):  # bootstrap makes both today; older Keystones did not
        if name not in roles:
            roles[name] = create("role", "roles", {"name": name})
    projects = {name: create("project", "projects", {"name": name, "domain_id": "default"})
                for name in ("service", *(entry["project"] for entry in USERS.values()))}
    # Service users have role service too: keystonemiddleware demands it of service tokens.
    service_users = {"glance": GLANCE_PASSWORD, **(SERVICE_PASSWORDS if compute else {})}
    grants = [(name, password, "service", ("admin", "service")) for name, password in service_users.items()]
    grants += [(name, entry["password"], entry["project"], ("member",)) for name, entry in USERS.items()]
    for name, password, project, role_names in grants:
        user_id = create("user", "users", {"name": name, "password": password, "domain_id": "default",
                                           "default_project_id": projects[project]})
        for role in role_names:
            _http("PUT", f"{AUTH_URL}/projects/{projects[project]}/users/{user_id}/roles/{roles[role]}", token=admin)
    existing = {region["id"] for region in _http("GET", f"{AUTH_URL}/regions", token=admin)[1]["regions"]}
    catalog = [("image", "glance", {region: f"http://127.0.0.1:{port}" for region, port in GLANCE_PORTS.items()})]
    if compute:
        catalog += [("placement", "placement", {COMPUTE_REGION: PLACEMENT_URL}),
                    ("compute", "nova", {COMPUTE_REGION: NOVA_URL}),
                    ("network", "neutron", {COMPUTE_REGION: NEUTRON_URL})]
    for service_type, name, urls in catalog:
        service_id = create("service", "services", {"type": service_type, "name": name, "enabled": True})
        for region, url in urls.items():
            if region not in existing:
                existing.add(create("region", "regions", {"id": region}))
            for interface in ("public", "internal", "admin"):
                create("endpoint", "endpoints", {"service_id": service_id, "interface": interface,
                                                 "region_id": region, "url": url})


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
    tmp.write_text(json.dumps({**asdict(info), "recipe": _recipe(bool(info.compute))}))
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
    if info is None or recipe != _recipe(bool(info.compute)):
        return None
    servers = _servers(Path(info.data), compute=bool(info.compute))
    if set(info.pids) != set(servers):
        return None
    for name, server in servers.items():
        # The group: RabbitMQ's recorded pid is the shell that runs the Erlang VM.
        if not any(_ours(member, server) for member in _members(info.pids[name])) or not _answering(server):
            return None
    return info


# -- the API the tests use -----------------------------------------------------------------------


def up(compute: bool = False) -> OpenStack:
    """Start Keystone and the Glances with fresh data (or reuse the healthy set already running).

    With compute, also Placement, Nova and Neutron in COMPUTE_REGION on their PostgreSQL and
    RabbitMQ, with the flavors FLAVORS and the shared network NETWORK (see compute_info()).
    A running set with compute serves a call without it as it is.
    """
    reserve_service_ports()
    with _locked():
        current = _running()
        if current and (current.compute or not compute):
            return current
        _down()
        return _fresh(compute)


def _fresh(compute: bool) -> OpenStack:  # pylint: disable=too-many-branches,too-many-locals,too-many-statements
    started = time.monotonic()
    root = _root()
    if compute:
        # First: the servers' command lines name programs of these packages (RabbitMQ's own
        # launcher, not Debian's wrapper that switches to the rabbitmq user).
        _host_packages()
    servers = _servers(root, compute=compute)
    _check_ports(servers)
    env_dir = venv()
    shutil.rmtree(root, ignore_errors=True)
    (root / "wsgi").mkdir(parents=True)
    for component, app in _SHIMS.items():
        (root / "wsgi" / f"hepinfra_tb_{component}_wsgi.py").write_text(
            _SHIM.format(app=app) + (_NEUTRON_MAPPERS if component == "neutron" else ""))
    _keystone_conf(root)
    for region in GLANCE_PORTS:
        _glance_conf(root, region, env_dir / "etc" / "glance" / "glance-api-paste.ini")
    if compute:
        _compute_confs(root, env_dir)
    info = OpenStack(auth_url=AUTH_URL, admin_password=ADMIN_PASSWORD,
                     users={name: dict(entry) for name, entry in USERS.items()}, pids={}, data=str(root),
                     compute=compute_info() if compute else {})
    _save(info)  # from here on, `down` cleans up whatever a failure leaves behind
    template = _template(compute)
    from_template = all((template / name).exists() for name in _template_files(compute))
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def record() -> None:
        info.pids.update({name: proc.pid for name, proc in procs.items()})
        _save(info)

    # The compute tier's migrations run in the background while Keystone's setup does.
    background = ThreadPoolExecutor(max_workers=1)
    try:
        if from_template:
            _restore(template, root, compute)
        migrated: Future[None] | None = None
        if compute:  # the cluster and the broker first: they start while Keystone does
            _compute_backends(env_dir, root, servers, procs, cold=not from_template)
            record()
            if not from_template:
                migrated = background.submit(_compute_databases, env_dir, root, servers, procs)
        if from_template:
            for name in ("keystone", *(f"glance-{region}" for region in GLANCE_PORTS)):
                procs[name] = _start(env_dir, servers[name], root)
        else:
            _setup(env_dir, root, servers, procs)
        record()
        since = ""
        if compute and from_template:  # their users and endpoints exist: no need to wait for Keystone
            since = _compute_apis(env_dir, root, servers, procs, None)
            record()
        _wait_healthy(servers["keystone"], procs["keystone"])
        if not from_template:
            _identity(compute)
            if compute:
                since = _compute_apis(env_dir, root, servers, procs, migrated)
                record()
        if compute:
            _start_nova_compute(env_dir, root, servers, procs)
            record()
        for name, proc in procs.items():
            _wait_healthy(servers[name], proc)
        _check_users(servers)
        if compute:
            _compute_ready(env_dir, servers, procs, since, cold=not from_template)
    except BaseException as exc:
        # Stop the servers but keep their logs for the error message; `down` removes them.
        with contextlib.suppress(TestbedError):
            _stop(*((proc.pid, servers[name]) for name, proc in procs.items()))
        _stop_leftovers()
        info.pids.clear()
        _save(info)
        if from_template and isinstance(exc, TestbedError):
            shutil.rmtree(template, ignore_errors=True)  # suspect: the next `up` builds it anew
        raise
    finally:
        background.shutdown(cancel_futures=True)
    how = "from the cached initial state"
    if not from_template:
        try:
            _save_template(root, template, compute)
            how = "initial state built and cached"
        except (OSError, sqlite3.Error, TestbedError) as exc:  # the servers run: only the next start is slower
            how = f"initial state built, not cached: {exc}"
    log(f"OpenStack up in {time.monotonic() - started:.0f} s ({how}, {_resident_mib()} MiB): Keystone {AUTH_URL}, "
        "Glance " + ", ".join(f"{region} :{port}" for region, port in GLANCE_PORTS.items())
        + (f"; compute in {COMPUTE_REGION}: Nova :{NOVA_PORT}, Neutron :{NEUTRON_PORT}, Placement :{PLACEMENT_PORT}"
           if compute else ""))
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


# -- the compute tier ------------------------------------------------------------------------------

_NOVA_SERVICES = ("nova-conductor", "nova-scheduler", "nova-compute")


def _compute_backends(env_dir: Path, root: Path, servers: dict[str, _Server],
                      procs: dict[str, subprocess.Popen[bytes]], *, cold: bool) -> None:
    """Start PostgreSQL (a new cluster when cold), the Erlang port mapper and RabbitMQ."""
    data = root / "postgres" / "data"
    if cold:
        data.parent.mkdir(parents=True, exist_ok=True)
        try:
            run([*_as_postgres_user(), _pg_bin("initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync",
                 "-E", "UTF8", "--locale=C"], env=servers["postgres"].env, timeout=300)
        except TestbedError as exc:
            raise TestbedError(f"PostgreSQL's initdb failed: {exc}") from None
    procs["postgres"] = _start(env_dir, servers["postgres"], root)
    procs["epmd"] = _start(env_dir, servers["epmd"], root)
    _wait_healthy(servers["epmd"], procs["epmd"])
    procs["rabbitmq"] = _start(env_dir, servers["rabbitmq"], root)


def _psql(sql: str, database: str = "postgres") -> str:
    """One SQL statement on the testbed's cluster; its rows, unaligned."""
    return run([_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(POSTGRES_PORT), "-U", "postgres", "-d", database,
                "-v", "ON_ERROR_STOP=1", "-qAtc", sql], env={"PGCONNECT_TIMEOUT": "10"}, timeout=120).stdout


def _compute_databases(env_dir: Path, root: Path, servers: dict[str, _Server],
                       procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Create and migrate the databases of Placement, Nova (API, cell0, cell1) and Neutron."""
    _wait_healthy(servers["postgres"], procs["postgres"])
    for name in ("placement", "nova_api", "nova_cell0", "nova", "neutron"):
        _psql(f"CREATE DATABASE {name}")
    bin_dir = env_dir / "bin"
    nova_manage = [str(bin_dir / "nova-manage"), "--config-file", str(root / "nova" / "nova.conf")]
    neutron_manage = [str(bin_dir / "neutron-db-manage"), "--config-file", str(root / "neutron" / "neutron.conf"),
                      "--config-file", str(root / "neutron" / "ml2_conf.ini")]
    nova, neutron = servers["nova-conductor"], servers["neutron"]

    def nova_steps() -> None:
        _manage(nova, [*nova_manage, "api_db", "sync"])
        _manage(nova, [*nova_manage, "cell_v2", "map_cell0"])  # database nova_cell0, named after nova's
        _manage(nova, [*nova_manage, "cell_v2", "create_cell", "--name", "cell1"])
        _manage(nova, [*nova_manage, "db", "sync"])  # cell1 and cell0

    def neutron_steps() -> None:
        before, mysql_only = _NEUTRON_MYSQL_ONLY
        _manage(neutron, [*neutron_manage, "upgrade", before])
        _manage(neutron, [*neutron_manage, "stamp", mysql_only])
        _manage(neutron, [*neutron_manage, "upgrade", "heads"])

    with ThreadPoolExecutor(max_workers=3) as pool:
        steps = [pool.submit(nova_steps), pool.submit(neutron_steps),
                 pool.submit(_manage, servers["placement"], [str(bin_dir / "placement-manage"), "--config-file",
                                                             str(root / "placement" / "placement.conf"), "db", "sync"])]
        for step in steps:
            step.result()


def _compute_apis(env_dir: Path, root: Path, servers: dict[str, _Server], procs: dict[str, subprocess.Popen[bytes]],
                  migrated: Future[None] | None) -> str:
    """Start Placement, Nova's API, conductor and scheduler and Neutron once their databases are ready.

    Returns the cluster's clock (UTC) before Nova's services started: their heartbeats must
    be newer than that. They wait for RabbitMQ themselves.
    """
    if migrated is None:
        _wait_healthy(servers["postgres"], procs["postgres"])
    else:
        migrated.result()
    since = _psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')").strip()
    for name in ("placement", "nova-api", "neutron", "nova-conductor", "nova-scheduler"):
        procs[name] = _start(env_dir, servers[name], root)
    return since


def _start_nova_compute(env_dir: Path, root: Path, servers: dict[str, _Server],
                        procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """nova-compute, once Placement serves: it reports its node there as it starts."""
    _wait_healthy(servers["placement"], procs["placement"])
    procs["nova-compute"] = _start(env_dir, servers["nova-compute"], root)


def _compute_ready(env_dir: Path, servers: dict[str, _Server], procs: dict[str, subprocess.Popen[bytes]],
                   since: str, *, cold: bool) -> None:
    """Wait for Nova's services to report; when cold, map the node and make flavors and network."""

    def exited() -> None:
        for name in _NOVA_SERVICES:
            if procs[name].poll() is not None:
                raise _failure(servers[name], f"exited (status {procs[name].returncode})")

    def reported() -> set[str]:
        exited()
        rows = _psql(f"SELECT \"binary\" FROM services WHERE deleted = 0 AND updated_at > '{since}'", "nova")
        return set(rows.split()) >= set(_NOVA_SERVICES)

    if cold:
        def node_known() -> bool:
            exited()
            return _psql(f"SELECT count(*) FROM compute_nodes WHERE deleted = 0 AND host = '{COMPUTE_HOST}'",
                         "nova").strip() != "0"

        _wait(node_known, servers["nova-compute"], "its node in Nova's database")
        _manage(servers["nova-compute"], [str(env_dir / "bin" / "nova-manage"), "--config-file",
                                          servers["nova-compute"].argv[-1], "cell_v2", "discover_hosts"])
    _wait(reported, servers["nova-compute"], "heartbeats of nova-conductor, nova-scheduler and nova-compute")
    if cold:
        admin = _admin_token()
        for name, spec in FLAVORS.items():
            _http("POST", f"{NOVA_URL}/flavors", token=admin,
                  body={"flavor": {"name": name, **spec, "os-flavor-access:is_public": True}})
        network = _http("POST", f"{NEUTRON_URL}/v2.0/networks", token=admin,
                        body={"network": {"name": NETWORK, "shared": True}})[1]["network"]
        _http("POST", f"{NEUTRON_URL}/v2.0/subnets", token=admin, body={"subnet": {
            "network_id": network["id"], "name": SUBNET, "ip_version": 4, "cidr": SUBNET_CIDR}})
        # Neutron makes a project's default security group when the project first asks for
        # security groups; made here, it is in the initial state, not in a test's first server.
        for name, entry in USERS.items():
            _http("GET", f"{NEUTRON_URL}/v2.0/security-groups", token=_token(name, entry["password"], entry["project"])[0])


def _wait(predicate, server: _Server, what: str) -> None:
    try:
        wait_for(predicate, START_TIMEOUT, 0.5, what)
    except TestbedError as exc:
        raise _failure(server, str(exc)) from None


def _admin_token() -> str:
    return _token("admin", ADMIN_PASSWORD, "admin")[0]


# What a fresh set starts from: the databases after setup (bootstrap, test users, catalog) and
# the keys. Building it costs ~15 s of CPU in keystone-manage and glance-manage; copying it
# costs nothing. It is kept per recipe, like the NetBox base dump. The compute tier adds its
# PostgreSQL cluster (a base backup, taken while it runs) and nova-compute's node identity.
_TEMPLATE_FILES = ("keystone/keystone.db", "keystone/fernet-keys", "keystone/credential-keys",
                   *(f"glance-{region}/glance.db" for region in GLANCE_PORTS))
_COMPUTE_TEMPLATE_FILES = ("nova/state", "postgres/data")


def _template_files(compute: bool) -> tuple[str, ...]:
    return _TEMPLATE_FILES + (_COMPUTE_TEMPLATE_FILES if compute else ())


def _template(compute: bool = False) -> Path:
    return cache_dir() / "openstack" / f"initial-{'compute-' if compute else ''}{_recipe(compute)}"


def _save_template(root: Path, template: Path, compute: bool) -> None:
    tmp = template.with_name(template.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in _template_files(compute):
        source, target = root / name, tmp / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name == "postgres/data":
            run([_pg_bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(POSTGRES_PORT), "-U", "postgres",
                 "-D", target, "-X", "stream", "-c", "fast", "--no-sync", "--no-manifest"], timeout=300)
        elif source.is_dir():
            shutil.copytree(source, target)
        else:  # SQLite's backup: a consistent copy while the server holds the database open
            with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
                src.backup(dst)
    keep = {_template(False).name, _template(True).name, tmp.name}
    for old in template.parent.glob("initial-*"):  # those of older recipes
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(template, ignore_errors=True)
    tmp.rename(template)


def _restore(template: Path, root: Path, compute: bool) -> None:
    for name in _template_files(compute):
        if (template / name).is_dir():
            shutil.copytree(template / name, root / name, dirs_exist_ok=True)
        else:
            shutil.copy2(template / name, root / name)


def _manage(server: _Server, argv: list[str]) -> None:
    """A keystone-manage, glance-manage, nova-manage ... step; its failure names the log it wrote."""
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
    servers = _servers(root, compute=True)
    info, _recipe_of_it = _load()
    found = info is not None or root.exists()
    if info is not None:
        recorded = _servers(Path(info.data), compute=True)
        _stop(*((pid, recorded[name]) for name, pid in info.pids.items() if name in recorded))
    # Servers whose pids were lost (a deleted state file): found by their process names.
    _stop(*_strays(servers))
    _stop_leftovers()
    shutil.rmtree(root, ignore_errors=True)
    if info is not None and Path(info.data) != root:
        shutil.rmtree(info.data, ignore_errors=True)
    _state().unlink(missing_ok=True)
    return found


def _compute_admin() -> str:
    """An admin token, once the compute tier runs."""
    info, _recipe_of_it = _load()
    if info is None or not info.compute:
        raise TestbedError("the compute tier of the OpenStack testbed is not up: call openstack.up(compute=True) first")
    return _admin_token()


def _project_id(admin: str, project: str) -> str:
    found = _http("GET", f"{AUTH_URL}/projects?name={urllib.parse.quote(project)}", token=admin)[1]["projects"]
    if not found:
        raise TestbedError(f"no project {project!r} in the OpenStack testbed")
    return found[0]["id"]


def set_quota(project: str, **limits: int) -> dict[str, Any]:
    """Set compute quotas of a project as the admin: instances, cores, ram (MiB); -1 is unlimited.

    Returns Nova's quota set after the change. reset_quota(project) returns to DEFAULT_QUOTA.
    """
    admin = _compute_admin()
    return _http("PUT", f"{NOVA_URL}/os-quota-sets/{_project_id(admin, project)}", token=admin,
                 body={"quota_set": limits})[1]["quota_set"]


def reset_quota(project: str) -> None:
    """Drop a project's own compute quotas: the defaults (DEFAULT_QUOTA) apply again."""
    admin = _compute_admin()
    _http("DELETE", f"{NOVA_URL}/os-quota-sets/{_project_id(admin, project)}", token=admin)


def force_error(server_id: str) -> None:
    """Put a server into state ERROR as the admin (Nova's os-resetState), whoever owns it."""
    _http("POST", f"{NOVA_URL}/servers/{server_id}/action", token=_compute_admin(),
          body={"os-resetState": {"state": "error"}})


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
    server = _servers(Path(info.data), compute=bool(info.compute))[name]
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
    parser.add_argument("--compute", action="store_true", help="with Placement, Nova and Neutron (RegionOne)")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            print(up(compute=args.compute).as_json())
        else:
            down()
    except TestbedError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
