"""make demo: the site on local test hosts. `python -m hepinfra_testbed.demo up|clean`.

Starts the demo hosts (podman containers running systemd), writes an inventory for them and
runs playbooks/site.yml against it, then prints what was deployed and how to reach it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from . import podman
from .common import LABEL, TestbedError, log

NETWORK = "hepinfra-demo"
REPO = Path(__file__).resolve().parents[3]
WORKDIR = REPO / ".tmp" / "demo"

# Host name -> (image, inventory groups). Groups are the ones playbooks/site.yml deploys by.
HOSTS: dict[str, tuple[str, list[str]]] = {
    "demo-head": ("trixie", ["htcondor_central_manager", "htcondor_submit"]),
    "demo-exec": ("trixie", ["htcondor_execute"]),
    # Debian 13 ships no ganglia: the monitoring host runs Debian 12.
    "demo-monitor": ("bookworm", ["ganglia_gmetad", "ganglia_gmond"]),
}

# Site settings of the demo (in a real site: group_vars of the inventory).
SITE_VARS = {
    "htcondor_startd_attrs": {"HepSite": "demo", "HepCloud": "local", "HepWorkerConfig": "demo"},
    "ganglia_clusters": [{"name": "services", "port": 8649}],
}

JOB = """executable = /bin/sh
arguments = "-c 'echo ran on `hostname` in $$(HepWorkerConfig)'"
output = demo.out
log = demo.log
request_cpus = 1
request_memory = 64M
queue
"""


def inventory() -> dict:
    groups: dict[str, dict] = {}
    for name, (_image, host_groups) in HOSTS.items():
        for group in host_groups:
            groups.setdefault(group, {"hosts": {}})["hosts"][name] = {}
    return {
        "all": {
            "vars": {
                "ansible_connection": "containers.podman.podman",
                "ansible_python_interpreter": "/usr/bin/python3",
                **SITE_VARS,
            },
            "children": groups,
        }
    }


def run_demo_job() -> str:
    """Submit one job as an unprivileged user on the head node; return its output."""
    script = (
        "id demo >/dev/null 2>&1 || useradd -m demo; cd /home/demo && cat > demo.sub && chown demo demo.sub && "
        "rm -f demo.out demo.log && su demo -c 'condor_submit demo.sub >/dev/null && condor_wait -wait 300 demo.log >/dev/null' "
        "&& cat demo.out"
    )
    result = podman.podman("exec", "-i", "demo-head", "sh", "-c", script, input_text=JOB, timeout=360)
    return result.stdout.strip()


def up() -> int:
    started = time.monotonic()
    WORKDIR.mkdir(parents=True, exist_ok=True)
    podman.network_up(NETWORK)
    for name, (image, _groups) in HOSTS.items():
        podman.host_up(name, image=image, network=NETWORK, extra=["--label", f"{LABEL}.demo=1"])
    inventory_file = WORKDIR / "inventory.yml"
    inventory_file.write_text(yaml.safe_dump(inventory(), sort_keys=False))
    log(f"running playbooks/site.yml against {inventory_file.relative_to(REPO)}")
    env = dict(os.environ, ANSIBLE_FORCE_COLOR=os.environ.get("ANSIBLE_FORCE_COLOR", "1"))
    playbook = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory_file), "hepinfra.cloud.site"],
        cwd=REPO, env=env, check=False,
    )
    if playbook.returncode != 0:
        log("site.yml failed; the hosts are left running for inspection ('make demo-clean' removes them)")
        return playbook.returncode
    log("submitting a job as an unprivileged user on demo-head")
    job_output = run_demo_job()
    slots = podman.podman("exec", "demo-head", "condor_status", "-af", "Machine", "HepWorkerConfig", "TotalSlotCpus").stdout.strip()
    elapsed = time.monotonic() - started
    print()
    print(f"hepinfra.cloud demo site is up ({elapsed:.0f} s)")
    print(f"  inventory: {inventory_file.relative_to(REPO)}")
    for name, (image, groups) in HOSTS.items():
        print(f"  {name:<13} Debian {image:<9} groups: {', '.join(groups)}")
    print("  deployed:")
    print("    hepinfra.cloud.common    on every host (packages, UTC, journal limits)")
    print("    hepinfra.cloud.htcondor  demo-head: central manager + submit; demo-exec: execute (IDTOKENS)")
    print("    hepinfra.cloud.ganglia   demo-monitor: gmetad + gmond, cluster 'services' on port 8649")
    print(f"  pool slots (condor_status): {slots.replace(chr(10), '; ') or 'none yet'}")
    print(f"  test job: {job_output}")
    conf = podman.containers_conf()
    print("  reach it:")
    print(f"    CONTAINERS_CONF={conf} podman exec -it demo-head bash     (condor_q, condor_status)")
    print(f"    CONTAINERS_CONF={conf} podman exec demo-monitor curl -s telnet://127.0.0.1:8651 | head   (gmetad XML)")
    print("  remove it all: make demo-clean")
    return 0


def clean() -> int:
    for name in HOSTS:
        podman.host_down(name)
    names = podman.podman("network", "ls", "--filter", f"label={LABEL}", "--format", "{{.Name}}").stdout.split()
    if NETWORK in names:
        podman.podman("network", "rm", "-f", NETWORK)
    podman.remove_idle_chains()
    log("demo removed")
    return 0


def main(argv: list[str]) -> int:
    if argv[1:] not in (["up"], ["clean"]):
        print("usage: python -m hepinfra_testbed.demo up|clean", file=sys.stderr)
        return 2
    try:
        return up() if argv[1] == "up" else clean()
    except TestbedError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
