"""Test hosts: podman containers running systemd on a network where they resolve each other."""

from __future__ import annotations

import json
import resource
from pathlib import Path

from .common import LABEL, PREFIX, TestbedError, cache_dir, log, remove_chains, run, wait_for
from .images import podman_image


def containers_conf() -> Path:
    """Write the containers.conf these machines need and return its path.

    podman's default nofile limit (1048576) is above the hard limit here and is refused;
    crun cannot handle the cgroup v1 hybrid layout, runc can; netavark + aardvark-dns give
    name resolution on user networks.
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        hard = 1048576
    text = (
        "# Written by the hepinfra testbed; used through CONTAINERS_CONF.\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={hard}:{hard}", "nproc=32768:32768"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        "[network]\n"
        'network_backend = "netavark"\n'
    )
    path = cache_dir() / "containers.conf"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def podman(*args: str, check: bool = True, timeout: float | None = 300, input_text: str | None = None):
    env = {"CONTAINERS_CONF": str(containers_conf())}
    return run(["podman", *args], check=check, env=env, timeout=timeout, input_text=input_text)


def network_up(name: str) -> str:
    """Create a labelled podman network (with DNS) unless it exists; return its name."""
    probe = podman("network", "inspect", name, check=False)
    if probe.returncode == 0:
        labels = json.loads(probe.stdout)[0].get("labels") or {}
        if LABEL not in labels:
            raise TestbedError(f"network {name} exists but was not created by the testbed; remove or rename it")
        return name
    podman("network", "create", "--label", f"{LABEL}=network", name)
    return name


def host_up(name: str, image: str = "trixie", network: str = f"{PREFIX}-net", extra: list[str] | None = None) -> str:
    """Start a systemd test host; wait until systemd is up; return the container name."""
    ref = podman_image(image)
    network_up(network)
    existing = podman("container", "inspect", name, check=False)
    if existing.returncode == 0:
        labels = json.loads(existing.stdout)[0]["Config"].get("Labels") or {}
        if LABEL not in labels:
            raise TestbedError(f"container {name} exists but was not created by the testbed; remove or rename it")
        podman("rm", "-f", "-t", "2", name)
    log(f"starting test host {name} ({image}) on network {network}")
    podman(
        "run", "-d",
        "--name", name,
        "--hostname", name,
        "--label", f"{LABEL}=host",
        "--network", network,
        "--systemd=always",
        *(extra or []),
        ref, "/sbin/init",
    )
    wait_for(lambda: _systemd_ready(name), timeout=120, what=f"systemd in {name}")
    return name


def _systemd_ready(name: str) -> bool:
    state = podman("exec", name, "systemctl", "is-system-running", check=False, timeout=30).stdout.strip()
    return state in ("running", "degraded")


def exec_in(name: str, *argv: str, check: bool = True, timeout: float | None = 900):
    return podman("exec", name, *argv, check=check, timeout=timeout)


def owned(kind: str) -> list[str]:
    """Names of the containers or networks the testbed created (carrying its label)."""
    if kind == "container":
        out = podman("ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}").stdout
    elif kind == "network":
        out = podman("network", "ls", "--filter", f"label={LABEL}", "--format", "{{.Name}}").stdout
    else:
        raise ValueError(kind)
    return [line for line in out.split() if line]


def host_down(name: str) -> None:
    """Remove one test host, refusing containers the testbed did not create."""
    existing = podman("container", "inspect", name, check=False)
    if existing.returncode != 0:
        return
    labels = json.loads(existing.stdout)[0]["Config"].get("Labels") or {}
    if LABEL not in labels:
        raise TestbedError(f"refusing to remove container {name}: it was not created by the testbed")
    podman("rm", "-f", "-t", "2", name)


def teardown() -> list[str]:
    """Remove every container and network carrying the testbed label; return what was removed."""
    removed = []
    for name in owned("container"):
        podman("rm", "-f", "-t", "2", name)
        removed.append(f"container {name}")
    for name in owned("network"):
        podman("network", "rm", "-f", name)
        removed.append(f"network {name}")
    if removed:
        removed += remove_idle_chains()
    return removed


def remove_idle_chains() -> list[str]:
    """netavark keeps its NETAVARK* chains after the last network goes; remove them once
    nothing of podman's runs any more (netavark recreates them when a network comes up)."""
    if podman("ps", "-q").stdout.strip() or _custom_networks():
        return []
    return [f"chain {c}" for c in remove_chains("NETAVARK", only_empty=False)]


def _custom_networks() -> list[str]:
    names = podman("network", "ls", "--format", "{{.Name}}").stdout.split()
    return [name for name in names if name != "podman"]
