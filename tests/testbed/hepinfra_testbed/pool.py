"""A real HTCondor pool that libvirt guests can join: central manager + submit in one test host.

The pool is deployed by the collection's own ``htcondor`` role (ansible-playbook, collections
from ANSIBLE_COLLECTIONS_PATH as the Makefile sets it) into a systemd test host. Guests reach
it over a NAT network the testbed creates in libvirt:

- libvirt network ``hepinfra-tb-pool`` (bridge ``hepinfra-tbpool``, BRIDGE_ADDRESS/24, DHCP).
  Start worker guests on it: ``guest.guest_up(name, network=pool.network, ...)``.
- The test host shares the machine's network namespace (``podman run --network host``) and
  HTCondor binds only to the bridge address (NETWORK_INTERFACE, BIND_ALL_INTERFACES = False,
  no IPv6). A guest's startd reaches the collector at the bridge address; the schedd reaches
  the guest's startd at the guest's own address on the bridge. Nothing crosses a NAT and
  nothing listens on any other interface of the machine.

    python -m hepinfra_testbed.pool up      # prints the pool's facts as JSON
    python -m hepinfra_testbed.pool down
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence
from xml.etree import ElementTree

from . import guest, podman
from .common import LABEL, LIBVIRT_NS, PREFIX, TestbedError, log, run, state_dir, wait_for
from .images import podman_image

REPO = Path(__file__).resolve().parents[3]

NETWORK = f"{PREFIX}-pool"
BRIDGE = "hepinfra-tbpool"  # interface names stop at 15 characters
SUBNET = ipaddress.ip_network("192.168.213.0/24")
BRIDGE_ADDRESS = str(SUBNET.network_address + 1)
HOST = f"{PREFIX}-pool-cm"
TRUST_DOMAIN = "hepinfra-tb-pool"
SUBMIT_USER = "submitter"

# Test speed: negotiation every 2 s, schedd and startd updates every few seconds, no benchmarks.
FAST_CONFIG: dict[str, object] = {
    "NEGOTIATOR_INTERVAL": 2,
    "NEGOTIATOR_MIN_INTERVAL": 1,
    "NEGOTIATOR_CYCLE_DELAY": 1,
    "SCHEDD_INTERVAL": 2,
    "UPDATE_INTERVAL": 5,
    "RunBenchmarks": "False",
}
# The central manager listens on the bridge address only (it shares the machine's network).
POOL_CONFIG: dict[str, object] = {
    **FAST_CONFIG,
    "NETWORK_INTERFACE": BRIDGE_ADDRESS,
    "BIND_ALL_INTERFACES": "False",
    "ENABLE_IPV6": "False",
}
# What the pool adds to a worker's execute configuration (the role renders the rest).
WORKER_CONFIG: dict[str, object] = dict(FAST_CONFIG)


@dataclass
class Pool:
    """A running pool: how guests reach it and how tests talk to it."""

    central_manager: str  # CONDOR_HOST as guests reach it: the bridge address
    trust_domain: str  # issuer of the pool's tokens; workers authenticate as condor@<trust_domain>
    network: str  # libvirt network for worker guests (guest_up(..., network=...))
    bridge: str
    container: str  # the test host running central manager + submit
    submit_user: str  # unprivileged user on the submit host (home /home/<user>)
    execute_config: str  # /etc/condor/config.d/50-hepinfra.conf for a worker, from the role
    libvirtd_started: bool = False  # pool_down stops libvirtd only if pool_up started it

    def as_json(self) -> str:
        return json.dumps(asdict(self))

    def run(self, argv: Sequence[str], *, user: str | None = None, input_text: str | None = None,
            check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a command on the pool host (as root, or as user in its home directory)."""
        options = ["-i"] if input_text is not None else []
        if user:
            options += ["--user", user, "--workdir", f"/home/{user}"]
        return podman.podman("exec", *options, self.container, *argv, check=check, timeout=timeout,
                             input_text=input_text)

    def mint_token(self, identity: str, authz: Sequence[str], lifetime: int) -> str:
        """A token signed with the pool key: identity (user@domain), authorizations, lifetime in
        seconds (0: no expiry)."""
        argv = ["condor_token_create", "-identity", identity]
        for level in authz:
            argv += ["-authz", level]
        if lifetime > 0:
            argv += ["-lifetime", str(lifetime)]
        token = self.run(argv, timeout=60).stdout.strip()
        if token.count(".") != 2:
            raise TestbedError(f"condor_token_create gave no token for {identity}")
        return token

    def worker_token(self, lifetime: int = 0) -> str:
        """The token an execute node needs: what the role gives its execute hosts."""
        return self.mint_token(f"condor@{self.trust_domain}", ["ADVERTISE_MASTER", "ADVERTISE_STARTD", "READ"],
                               lifetime)

    def status(self, *args: str) -> list[dict]:
        """condor_status -json with extra arguments (e.g. a -constraint); [] when nothing matches."""
        out = self.run(["condor_status", "-json", *args], timeout=60).stdout.strip()
        return json.loads(out) if out else []

    def submit(self, description: str) -> int:
        """Submit a job as the unprivileged user from its home directory; return the cluster id."""
        out = self.run(["condor_submit", "-terse", "-"], user=self.submit_user, input_text=description,
                       timeout=120).stdout.strip()
        try:
            return int(out.split(".", 1)[0])
        except ValueError:
            raise TestbedError(f"condor_submit answered {out!r}") from None

    def render_execute_config(self, startd_attrs: dict | None = None, extra_config: dict | None = None) -> str:
        """The role's execute configuration for this pool with site attributes of one worker group."""
        return render_execute_config(self.central_manager, self.trust_domain, startd_attrs,
                                     {**WORKER_CONFIG, **(extra_config or {})})

    def worker_user_data(self, startd_attrs: dict | None = None, token_lifetime: int = 0) -> str:
        """Complete user-data for one worker guest of this pool (see worker_user_data())."""
        return worker_user_data(self.render_execute_config(startd_attrs), self.worker_token(token_lifetime))


def worker_user_data(execute_config: str, token: str) -> str:
    """cloud-init user-data that makes a guest of the worker image (htcondor installed) join the pool.

    The execute configuration goes where the role would write it, the token 0600 root into
    tokens.d, and HTCondor restarts to read both (it may have started before cloud-init wrote them).
    """
    return (
        "#cloud-config\n"
        "write_files:\n"
        "  - path: /etc/condor/config.d/50-hepinfra.conf\n"
        "    owner: root:root\n"
        "    permissions: '0644'\n"
        "    content: |\n"
        + textwrap.indent(execute_config.rstrip("\n") + "\n", "      ")
        + "  - path: /etc/condor/tokens.d/worker\n"
        "    owner: root:root\n"
        "    permissions: '0600'\n"
        "    content: |\n"
        f"      {token.strip()}\n"
        "runcmd:\n"
        "  - [systemctl, restart, condor]\n"
    )


# -- state ----------------------------------------------------------------------------------------


def _state() -> Path:
    return state_dir() / "pool.json"


def _workdir() -> Path:
    return state_dir() / "pool"


def _log_file() -> Path:
    """The last ansible-playbook run's output; kept after pool_down, for reading after a failure."""
    return state_dir() / "pool-ansible.log"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One pool_up or pool_down at a time, also across processes."""
    with open(state_dir() / "pool.lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _load() -> Pool | None:
    try:
        return Pool(**json.loads(_state().read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):  # a state file of an older layout: stale
        return None


def _healthy(info: Pool) -> bool:
    if not _network_active():
        return False
    probe = podman.podman("container", "inspect", "--format", "{{.State.Running}}", info.container, check=False)
    if probe.stdout.strip() != "true":
        return False
    return bool(schedds(info))


def schedds(info: Pool) -> list[str]:
    """Names of the schedds in the pool's collector ([] while there is none or the collector does not answer)."""
    out = info.run(["condor_status", "-schedd", "-af", "Name"], check=False, timeout=30).stdout
    return [line for line in out.split() if line]


# -- the libvirt network -----------------------------------------------------------------------------


def _libvirt_reachable() -> bool:
    """libvirtd answers. Listing domains needs no hypervisor probe (`virsh version` may
    re-probe QEMU's capabilities, for tens of seconds, when libvirt thinks its cache stale)."""
    return run(["virsh", "-c", guest.URI, "list", "--name"], check=False, timeout=60).returncode == 0


def _network_xml(name: str, bridge: str, subnet: ipaddress.IPv4Network) -> str:
    first, last = subnet.network_address + 10, subnet.broadcast_address - 1
    return f"""<network>
  <name>{name}</name>
  <metadata><tb:testbed xmlns:tb='{LIBVIRT_NS}'>pool</tb:testbed></metadata>
  <forward mode='nat'/>
  <bridge name='{bridge}' stp='off' delay='0'/>
  <ip address='{subnet.network_address + 1}' netmask='{subnet.netmask}'>
    <dhcp><range start='{first}' end='{last}'/></dhcp>
  </ip>
</network>
"""


def _network_owned(name: str = NETWORK) -> bool | None:
    """None: no such network; True: the testbed's; raises if someone else's has the name."""
    probe = run(["virsh", "-c", guest.URI, "net-dumpxml", name], check=False, timeout=30)
    if probe.returncode != 0:
        return None
    metadata = ElementTree.fromstring(probe.stdout).find("metadata")
    if metadata is None or metadata.find(f"{{{LIBVIRT_NS}}}testbed") is None:
        raise TestbedError(f"libvirt network {name} exists but was not created by the testbed; remove or rename it")
    return True


def _network_active(name: str = NETWORK) -> bool:
    out = run(["virsh", "-c", guest.URI, "net-list", "--name"], check=False, timeout=30).stdout
    return name in out.split()


def network_up(name: str = NETWORK, bridge: str = BRIDGE, subnet: ipaddress.IPv4Network = SUBNET) -> None:
    """A transient NAT network (gone when destroyed) on a subnet nothing else here uses; the
    machine has the subnet's first address on the bridge."""
    if _network_owned(name):
        if _network_active(name):
            return
        run(["virsh", "-c", guest.URI, "net-undefine", name], check=False)
    routes = json.loads(run(["ip", "-j", "route"]).stdout or "[]")
    for route in routes:
        if route.get("dst", "default") != "default" and ipaddress.ip_network(route["dst"], strict=False).overlaps(subnet):
            raise TestbedError(f"{subnet} is already routed here ({route['dst']} dev {route.get('dev')}); "
                               f"the libvirt network {name} needs it free")
    with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix="hepinfra-tb-pool-") as xml:
        xml.write(_network_xml(name, bridge, subnet))
        xml.flush()
        run(["virsh", "-c", guest.URI, "net-create", xml.name], timeout=60)
    log(f"libvirt network {name} up: bridge {bridge} {subnet.network_address + 1}/{subnet.prefixlen}")


def network_down(name: str = NETWORK) -> bool:
    """Remove the testbed's libvirt network of that name; True if there was one."""
    if not _network_owned(name):
        return False
    run(["virsh", "-c", guest.URI, "net-destroy", name], check=False, timeout=60)
    run(["virsh", "-c", guest.URI, "net-undefine", name], check=False, timeout=60)
    return True


# -- the test host ---------------------------------------------------------------------------------


def host_network_host_up(host: str = HOST, address: str = BRIDGE_ADDRESS, extra: Sequence[str] = ()) -> None:
    """A systemd test host in the machine's network namespace (podman.host_up uses a podman network),
    its name resolving to address (a bridge address HTCondor is to bind to) inside it."""
    ref = podman_image("trixie")
    podman.host_down(host)  # refuses a container the testbed did not create
    log(f"starting test host {host} (trixie) in the host network, HTCondor on {address} only")
    podman.podman(
        "run", "-d",
        "--name", host,
        "--hostname", host,
        "--add-host", f"{host}:{address}",
        "--label", f"{LABEL}=host",
        *extra,
        "--network", "host",
        "--systemd=always",
        ref, "/sbin/init",
    )

    def systemd_ready() -> bool:
        state = podman.podman("exec", host, "systemctl", "is-system-running", check=False, timeout=30).stdout.strip()
        return state in ("running", "degraded")

    wait_for(systemd_ready, timeout=120, what=f"systemd in {host}")
    # The host shares the machine's network: no package may start a daemon that listens on it.
    # The htcondor package recommends openssh-server, which would listen on port 22 of every
    # interface; policy-rc.d keeps package installs from starting services (the role starts
    # HTCondor itself) and the mask keeps sshd off for good.
    podman.podman("exec", "-i", host, "sh", "-c", "cat > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d",
                  input_text="#!/bin/sh\n# hepinfra testbed: packages start no services on this host\nexit 101\n")
    podman.podman("exec", host, "systemctl", "mask", "ssh.service", "ssh.socket")


# -- ansible-playbook --------------------------------------------------------------------------------


def _collections_path() -> str:
    path = os.environ.get("ANSIBLE_COLLECTIONS_PATH") or str(REPO / ".tmp" / "collections")
    found = [p for p in path.split(os.pathsep) if (Path(p) / "ansible_collections/hepinfra/cloud/roles/htcondor").is_dir()]
    if not found:
        raise TestbedError(f"hepinfra.cloud is not in ANSIBLE_COLLECTIONS_PATH ({path}): run 'make bootstrap'")
    return path


def _playbook(play: list[dict], inventory: dict, workdir: Path, what: str) -> None:
    binary = Path(sys.executable).parent / "ansible-playbook"
    if not binary.exists():
        binary = Path(shutil.which("ansible-playbook") or "ansible-playbook")
    (workdir / "play.json").write_text(json.dumps(play))
    (workdir / "inventory.json").write_text(json.dumps(inventory))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=_collections_path(), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_LOCAL_TEMP=str(workdir / "tmp"), ANSIBLE_RETRY_FILES_ENABLED="0",
               CONTAINERS_CONF=str(podman.containers_conf()))
    argv = [str(binary), "-i", str(workdir / "inventory.json"), str(workdir / "play.json")]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800, check=False)
    output = proc.stdout + proc.stderr
    with open(_log_file(), "a", encoding="utf-8") as log_file:
        log_file.write(f"==> {what}: {shlex.join(argv)}\n{output}\n")
    if proc.returncode != 0:
        raise TestbedError(f"{what} failed (ansible-playbook exit {proc.returncode}); output in {_log_file()}:\n"
                           f"{output.strip()[-3000:]}")


def render_execute_config(central_manager: str, trust_domain: str, startd_attrs: dict | None = None,
                          extra_config: dict | None = None) -> str:
    """Run the role's execute_config entry point on localhost; return htcondor_execute_config."""
    with tempfile.TemporaryDirectory(prefix="hepinfra-tb-execute-config-", dir=state_dir()) as tmp:
        work = Path(tmp)
        out = work / "50-hepinfra.conf"
        play = [{
            "name": "Render a worker's execute configuration",
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                {"name": "Render it with the htcondor role",
                 "ansible.builtin.include_role": {"name": "hepinfra.cloud.htcondor", "tasks_from": "execute_config"},
                 "vars": {"htcondor_central_manager": central_manager, "htcondor_trust_domain": trust_domain,
                          "htcondor_startd_attrs": startd_attrs or {}, "htcondor_extra_config": extra_config or {}}},
                {"name": "Keep it", "ansible.builtin.copy": {"content": "{{ htcondor_execute_config }}", "dest": str(out),
                                                             "mode": "0600"}},
            ],
        }]
        localhost = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
        inventory = {"all": {"hosts": {"localhost": localhost}}}
        _playbook(play, inventory, work, "rendering the execute configuration (htcondor role, execute_config)")
        return out.read_text()


def _deploy(workdir: Path) -> None:
    play = [{
        "name": "Central manager and submit host of the test pool",
        "hosts": HOST,
        "gather_facts": True,
        "tasks": [{"name": "Apply the htcondor role", "ansible.builtin.include_role": {"name": "hepinfra.cloud.htcondor"}}],
    }]
    inventory = {"all": {"hosts": {HOST: {
        "ansible_connection": "containers.podman.podman",
        "ansible_python_interpreter": "/usr/bin/python3",
        "htcondor_roles": ["central_manager", "submit"],
        "htcondor_central_manager": BRIDGE_ADDRESS,
        "htcondor_trust_domain": TRUST_DOMAIN,
        "htcondor_extra_config": POOL_CONFIG,
    }}}}
    _playbook(play, inventory, workdir, "deploying the pool (htcondor role)")


# -- the API -------------------------------------------------------------------------------------------


def pool_up(reuse: bool = True) -> Pool:
    """Start the pool (or reuse the healthy one already running); everything is removed on failure."""
    with _locked():
        current = _load()
        if reuse and current and _healthy(current):
            return current
        _pool_down()
        started = time.monotonic()
        was_running = _libvirt_reachable()
        if not was_running:
            guest.daemon_up()
        _log_file().write_text("")
        workdir = _workdir()
        workdir.mkdir(parents=True, exist_ok=True)
        info = Pool(central_manager=BRIDGE_ADDRESS, trust_domain=TRUST_DOMAIN, network=NETWORK, bridge=BRIDGE,
                    container=HOST, submit_user=SUBMIT_USER, execute_config="", libvirtd_started=not was_running)
        # Recorded first, so that pool_down finds what to remove even after a failure half-way.
        _state().write_text(info.as_json())
        try:
            network_up()
            host_network_host_up()
            _deploy(workdir)
            info.run(["useradd", "--create-home", "--shell", "/bin/sh", SUBMIT_USER])
            info.execute_config = render_execute_config(BRIDGE_ADDRESS, TRUST_DOMAIN, None, WORKER_CONFIG)
            wait_for(lambda: schedds(info), timeout=120, interval=2, what="the schedd in the pool's collector")
        except BaseException:
            _pool_down()
            raise
        _state().write_text(info.as_json())
        log(f"HTCondor pool up in {time.monotonic() - started:.0f} s: collector {BRIDGE_ADDRESS}:9618 "
            f"(libvirt network {NETWORK}), trust domain {TRUST_DOMAIN}")
        return info


def pool_down() -> bool:
    """Remove the pool's host and network (and libvirtd, if pool_up started it); True if there was one."""
    with _locked():
        return _pool_down()


def _pool_down() -> bool:
    info = _load()
    removed = False
    if podman.podman("container", "inspect", HOST, check=False).returncode == 0:
        podman.host_down(HOST)
        removed = True
    if _libvirt_reachable():
        removed = network_down() or removed
        if info and info.libvirtd_started and not guest.owned_guests():
            guest.daemon_down()
    shutil.rmtree(_workdir(), ignore_errors=True)
    _state().unlink(missing_ok=True)
    return removed or info is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hepinfra_testbed.pool", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down"])
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            print(pool_up().as_json())
        else:
            pool_down()
    except TestbedError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
