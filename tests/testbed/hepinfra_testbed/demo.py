"""make demo: the whole site on local test hosts. `python -m hepinfra_testbed.demo up|clean`.

1. hosts: demo-head (HTCondor central manager + submit) shares the machine's network and binds
   HTCondor to the bridge of a libvirt network, so that worker VMs on that network reach it;
   demo-squid (squid, shoal agent, RabbitMQ) and demo-monitor (ganglia) are on a podman network;
2. playbooks/site.yml deploys every permanent service by inventory group;
3. playbooks/worker_image.yml builds the worker image (cached while its recipe is unchanged);
4. playbooks/images.yml uploads it to a local libvirt cloud (a directory storage pool);
5. a batch of jobs is submitted as an unprivileged user;
6. playbooks/scale.yml runs cycle after cycle: workers are launched, join the pool, run the jobs
   and are retired once idle;
7. the central manager's VM is backed up if it is one (here it is a container: nothing to do);
8. playbooks/status.yml writes the status page and summary.

Every step prints what it does and how long it took; `clean` removes all of it (the cached
host and worker images stay).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from . import guest, podman, pool
from .common import LABEL, TestbedError, cache_dir, log, run, state_dir, wait_for

REPO = Path(__file__).resolve().parents[3]
WORKDIR = REPO / ".tmp" / "demo"
BIN = Path(sys.executable).parent

PODMAN_NETWORK = "hepinfra-demo"
# The workers' libvirt network: the machine is HEAD_ADDRESS on its bridge, and so is demo-head.
LIBVIRT_NETWORK = "hepinfra-tb-demo"
BRIDGE = "hepinfra-tbdemo"
SUBNET = ipaddress.ip_network("192.168.214.0/24")
HEAD_ADDRESS = str(SUBNET.network_address + 1)
HEAD = "demo-head"
# The local cloud's image store: a directory QEMU (its own user) can read.
STORAGE_POOL = "hepinfra-tb-demo-images"
STORAGE_DIR = Path(tempfile.gettempdir()) / "hepinfra-demo-cloud"

TRUST_DOMAIN = "hepinfra-demo"
SUBMIT_USER = "demo"
GROUP = "demo"
CLOUD = "local"
IMAGE = "demo-worker"
JOBS = 4

# Hosts on the podman network: name -> (image, inventory groups).
HOSTS: dict[str, tuple[str, list[str]]] = {
    "demo-squid": ("trixie", ["squid", "shoal_server", "shoal_agent"]),
    # Debian 13 ships no ganglia: the monitoring host runs Debian 12.
    "demo-monitor": ("bookworm", ["ganglia_gmetad", "ganglia_gmond"]),
}
HEAD_GROUPS = ["htcondor_central_manager", "htcondor_submit"]

# Site settings of the demo (in a real site: group_vars of the inventory).
SITE_VARS: dict[str, object] = {
    "htcondor_trust_domain": TRUST_DOMAIN,
    "ganglia_clusters": [{"name": "services", "port": 8649}],
    # shoal: RabbitMQ on demo-squid (the shoal server itself needs a site-named source: not run here)
    "shoal_rabbitmq_agent_password": "demo-agent-secret",
    "shoal_rabbitmq_server_password": "demo-server-secret",
    "shoal_agent_interval": 10,
    "shoal_client_server_url": "http://demo-squid/nearest",
    # squid: a CVMFS cache whose stratum-1 is a stand-in web server on demo-squid (no internet here)
    "squid_allowed_domains": ["cvmfs-stratum-one.cern.ch"],
    "squid_client_networks": [str(SUBNET)],     # the workers' network
    "squid_cache_peers": [{"host": "127.0.0.1", "port": 8000, "options": "no-query originserver name=stratum1"}],
    "squid_never_direct": True,
    "squid_cache_mem_mb": 64,
    "squid_shutdown_lifetime": 1,
}
HEAD_VARS: dict[str, object] = {
    # demo-head shares the machine's network: HTCondor listens on the workers' bridge only.
    # The negotiation and update intervals are short so that the demo moves fast.
    "htcondor_extra_config": pool.POOL_CONFIG | {"NETWORK_INTERFACE": HEAD_ADDRESS},
}

# The stand-in stratum-1 and pip's CA bundle (what the controller's pip trusts: PIP_CERT or the system's).
PREPARE = [
    {"ansible.builtin.import_playbook": str(REPO / "tests" / "molecule" / "pip-ca.yml"),
     "vars": {"pip_ca_hosts": "shoal_agent"}},
    {"name": "A stand-in CVMFS stratum-1 for the demo squid",
     "hosts": "squid",
     "tasks": [
         {"name": "Create the repository tree",
          "ansible.builtin.file": {"path": "/srv/www/cvmfs/atlas.cern.ch", "state": "directory", "mode": "0755"}},
         {"name": "Publish a repository whitelist",
          "ansible.builtin.copy": {"dest": "/srv/www/cvmfs/atlas.cern.ch/.cvmfswhitelist",
                                   "content": "20261122000000\nE20271222000000\nNatlas.cern.ch\n", "mode": "0644"}},
         {"name": "Serve /srv/www on port 8000",
          "ansible.builtin.command": {
              "cmd": "systemd-run --unit=demo-stratum1 --property=Restart=always python3 -m http.server 8000 "
                     "--bind 127.0.0.1 --directory /srv/www",
              "creates": "/run/systemd/transient/demo-stratum1.service"}},
     ]},
]

JOB = f"""executable = /bin/sh
arguments = "-c 'sleep 20; echo ran on `hostname`'"
transfer_executable = false
output = out/job.$(Process)
error = out/job.$(Process).err
log = demo.log
accounting_group = group_{GROUP}.analysis
accounting_group_user = {SUBMIT_USER}
request_cpus = 1
request_memory = 128M
request_disk = 100M
queue {JOBS}
"""


class Steps:
    """Numbered steps with their wall times."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done: list[tuple[str, float]] = []
        self.started = time.monotonic()
        self._current: tuple[str, float] | None = None

    def start(self, title: str) -> None:
        self.finish()
        print(f"\n[{len(self.done) + 1}/{self.total}] {title}", flush=True)
        self._current = (title, time.monotonic())

    def finish(self) -> None:
        if self._current:
            title, began = self._current
            took = time.monotonic() - began
            self.done.append((title, took))
            print(f"      done in {took:.0f} s", flush=True)
            self._current = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def say(message: str) -> None:
    print(f"      {message}", flush=True)


def ansible_env() -> dict[str, str]:
    return dict(os.environ, ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_RETRY_FILES_ENABLED="0",
                CONTAINERS_CONF=str(podman.containers_conf()))


def playbook(name: str, *args: str, inventory: Path | None = None, quiet: bool = True,
             extra: dict | None = None, timeout: float = 3600) -> str:
    """Run a playbook of the collection (hepinfra.cloud.<name>) or a file; its output goes to the
    demo's log (and the terminal unless quiet). Fails with the output's end."""
    argv = [str(BIN / "ansible-playbook"), "-i", str(inventory) if inventory else "localhost,"]
    if inventory is None:
        argv += ["-c", "local"]
    if extra is not None:
        values = WORKDIR / f"vars-{name.rsplit('.', 1)[-1].rsplit('/', 1)[-1]}.json"
        values.write_text(json.dumps(extra, indent=1))
        argv += ["-e", f"@{values}"]
    argv += [*args, name]
    env = ansible_env()
    with open(WORKDIR / "ansible.log", "a", encoding="utf-8") as logfile:
        logfile.write(f"\n==> {' '.join(argv)}\n")
        logfile.flush()
        if quiet:
            done = subprocess.run(argv, cwd=REPO, env=dict(env, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"), capture_output=True,
                                  text=True, timeout=timeout, check=False)
            logfile.write(done.stdout + done.stderr)
            output = done.stdout + done.stderr
        else:
            done = subprocess.run(argv, cwd=REPO, env=dict(env, ANSIBLE_FORCE_COLOR=os.environ.get(
                "ANSIBLE_FORCE_COLOR", "1")), timeout=timeout, check=False)
            output = ""
    if done.returncode != 0:
        raise TestbedError(f"{name} failed (exit {done.returncode}); the whole output is in "
                           f"{(WORKDIR / 'ansible.log').relative_to(REPO)}:\n{output[-3000:]}")
    return output


# demo-head as the test bed's pool hosts are driven: commands as root or as the submit user, condor_submit.
HEAD_POOL = pool.Pool(central_manager=HEAD_ADDRESS, trust_domain=TRUST_DOMAIN, network=LIBVIRT_NETWORK, bridge=BRIDGE,
                      container=HEAD, submit_user=SUBMIT_USER, execute_config="")


def inventory() -> dict:
    groups: dict[str, dict] = {group: {"hosts": {HEAD: {}}} for group in HEAD_GROUPS}
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
            "hosts": {HEAD: HEAD_VARS},
            "children": groups,
        }
    }


def cloud(boot_dir: Path) -> dict:
    """The local libvirt cloud as a site describes it (docs/clouds.md)."""
    return {
        "name": CLOUD, "type": "libvirt", "priority": 10,
        "libvirt": {
            "uri": guest.URI, "pool": STORAGE_POOL, "domain_type": "qemu", "network": LIBVIRT_NETWORK,
            "console_log": str(boot_dir),
            # The worker image has no boot loader: its kernel and initrd boot it directly.
            "boot": {"kernel": str(boot_dir / "vmlinuz"), "initrd": str(boot_dir / "initrd.img"),
                     "cmdline": "root=/dev/vda rw console=ttyS0 quiet"},
            # two one-core jobs per worker: the smallest flavor that fits a job has 2 cores
            "flavors": {"w1.medium": {"vcpus": 2, "memory_mb": 1024}, "w1.large": {"vcpus": 2, "memory_mb": 2048}},
        },
        "limits": {"instances": 2},
    }


def scale_vars(boot_dir: Path) -> dict:
    return {
        "hepinfra_clouds": [cloud(boot_dir)],
        "scale_groups": [{"name": GROUP, "accounting_groups": [f"group_{GROUP}"], "image": IMAGE}],
        "scale_condor": {"trust_domain": TRUST_DOMAIN, "central_manager": HEAD_ADDRESS,
                         "command_prefix": ["podman", "exec", HEAD], "token_lifetime": 7200},
        # keep_alive is short so that the demo ends soon after its jobs
        "scale_policy": {"keep_alive": 30, "job_alive": 600, "come_alive": 900, "max_starting": 2},
        "scale_user_data": [
            {"type": "file", "path": "/etc/condor/config.d/50-hepinfra.conf",
             "content": "{% raw %}{{ condor_config }}{% endraw %}"},
            {"type": "shell", "content": "#!/bin/sh\nsystemctl restart condor\n", "template": False}],
        # scale.yml renders the workers' HTCondor configuration with the htcondor role (execute_config)
        "scale_user_data_context": {"condor_config": "{{ htcondor_execute_config }}"},
        "htcondor_startd_attrs": {"HepSite": "demo", "HepCloud": CLOUD},
        "htcondor_extra_config": pool.WORKER_CONFIG,     # the demo's short update intervals
        "scale_history": str(WORKDIR / "scale-history.jsonl"),
        "scale_audit_log": str(WORKDIR / "workers-audit.jsonl"),
        "scale_lock_file": str(WORKDIR / "scale.lock"),
        "scale_max_lifetime": 7200,
    }


def total(value) -> int:
    """Sum of the numbers in a nested dict ({cloud: {group: n}} and the like)."""
    if isinstance(value, dict):
        return sum(total(v) for v in value.values())
    return value if isinstance(value, int) else 0


def read_history() -> list[dict]:
    path = WORKDIR / "scale-history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- the steps --------------------------------------------------------------------------------------


def hosts_up() -> None:
    pool.network_up(LIBVIRT_NETWORK, BRIDGE, SUBNET)
    say(f"libvirt network {LIBVIRT_NETWORK}: bridge {BRIDGE} {HEAD_ADDRESS}/{SUBNET.prefixlen} (the workers' network)")
    pool.host_network_host_up(HEAD, HEAD_ADDRESS, extra=["--label", f"{LABEL}.demo=1"])
    podman.network_up(PODMAN_NETWORK)
    for name, (image, _groups) in HOSTS.items():
        podman.host_up(name, image=image, network=PODMAN_NETWORK, extra=["--label", f"{LABEL}.demo=1"])
    inventory_file = WORKDIR / "inventory.yml"
    inventory_file.write_text(yaml.safe_dump(inventory(), sort_keys=False))
    say(f"inventory: {inventory_file.relative_to(REPO)}")


def site() -> None:
    inventory_file = WORKDIR / "inventory.yml"
    prepare = WORKDIR / "prepare.yml"
    prepare.write_text(yaml.safe_dump(PREPARE, sort_keys=False))
    playbook(str(prepare), inventory=inventory_file)
    say("running hepinfra.cloud.site (output follows)")
    playbook("hepinfra.cloud.site", inventory=inventory_file, quiet=False)
    HEAD_POOL.run(["useradd", "--create-home", "--shell", "/bin/sh", SUBMIT_USER], check=False)
    wait_for(lambda: pool.schedds(HEAD_POOL), timeout=120, interval=2, what="the schedd in the collector")
    fetch = ("import urllib.request as u; print(u.build_opener(u.ProxyHandler({'http': 'http://127.0.0.1:3128'}))"
             ".open('http://cvmfs-stratum-one.cern.ch/cvmfs/atlas.cern.ch/.cvmfswhitelist', timeout=30).read().decode())")
    fetched = podman.podman("exec", "demo-squid", "python3", "-c", fetch, check=False).stdout
    if "atlas.cern.ch" not in fetched:
        raise TestbedError("squid on demo-squid did not serve the CVMFS whitelist of its stratum-1")
    say("squid on demo-squid serves CVMFS (the stand-in stratum-1's whitelist) through port 3128")
    for host, unit in (("demo-squid", "shoal-agent"), ("demo-squid", "rabbitmq-server"), ("demo-monitor", "gmetad"),
                       ("demo-monitor", "ganglia-monitor"), (HEAD, "condor")):
        state = podman.podman("exec", host, "systemctl", "is-active", unit, check=False).stdout.strip()
        if state != "active":
            raise TestbedError(f"{unit} on {host} is {state or 'unknown'}, not active")
        say(f"{unit:<16} active on {host}")


def worker_image() -> Path:
    where = cache_dir() / "worker-image"
    output = playbook("hepinfra.cloud.worker_image", extra={"worker_image_dir": str(where)}, timeout=3600)
    say("built" if "changed=0" not in output else f"unchanged (cached in {where})")
    return where


def local_cloud(image_dir: Path) -> Path:
    """The local cloud's storage pool, the worker image uploaded by the image module; returns the boot dir."""
    shutil.rmtree(STORAGE_DIR, ignore_errors=True)
    images, boot = STORAGE_DIR / "images", STORAGE_DIR / "boot"
    for path in (STORAGE_DIR, images, boot):
        path.mkdir(parents=True)
        path.chmod(0o711)
    for name in ("vmlinuz", "initrd.img"):
        shutil.copy(image_dir / name, boot / name)
        (boot / name).chmod(0o644)
    run(["virsh", "-c", guest.URI, "pool-create-as", STORAGE_POOL, "dir", "--target", str(images)], timeout=120)
    say(f"libvirt storage pool {STORAGE_POOL} ({images})")
    playbook("hepinfra.cloud.images", extra={"hepinfra_clouds": [cloud(boot)],
                                             "images": [{"name": IMAGE, "src": str(image_dir / "disk.qcow2")}]})
    volumes = run(["virsh", "-c", guest.URI, "vol-list", STORAGE_POOL, "--details"]).stdout
    say(f"uploaded by hepinfra.cloud.image: {', '.join(line.split()[0] for line in volumes.splitlines()[2:] if line.strip())}")
    return boot


def submit() -> int:
    HEAD_POOL.run(["mkdir", "-p", "out"], user=SUBMIT_USER)
    cluster = HEAD_POOL.submit(JOB)
    say(f"cluster {cluster}: {JOBS} one-core jobs of 20 s as user {SUBMIT_USER}, accounting group group_{GROUP}.analysis")
    return cluster


def scaling(values: dict, timeout: float = 1800) -> dict:
    """scale.yml cycles until the jobs are done and the workers retired; returns figures."""
    started = time.monotonic()
    cycles = 0
    launched = retired = 0
    while True:
        cycles += 1
        playbook("hepinfra.cloud.scale", extra=values, timeout=1200)
        line = read_history()[-1]
        jobs = line["jobs"].get(GROUP, {})
        workers = line["workers"].get(CLOUD, {})
        launched += total(line["launched"])
        retired += line["deleted"]
        state = ", ".join(f"{k} {v}" for k, v in sorted(workers.items()) if v) or "none"
        say(f"cycle {cycles:>2} at {time.monotonic() - started:4.0f} s ({line['duration']:.1f} s): "
            f"jobs idle {jobs.get('idle', 0)} running {jobs.get('running', 0)} | workers: {state} | "
            f"launched {total(line['launched'])} drained {line['drained']} deleted {line['deleted']}")
        if launched and not jobs.get("idle") and not jobs.get("running") and not total(workers):
            return {"cycles": cycles, "launched": launched, "retired": retired, "seconds": time.monotonic() - started}
        if time.monotonic() - started > timeout:
            raise TestbedError(f"the jobs and workers were not done after {timeout:.0f} s; see "
                               f"{(WORKDIR / 'scale-history.jsonl').relative_to(REPO)} and the pool on {HEAD}")
        time.sleep(5)


def backup() -> None:
    """backup.yml backs up libvirt VMs; the central manager is backed up only if it is one."""
    found = run(["virsh", "-c", guest.URI, "dominfo", HEAD], check=False, timeout=60).returncode == 0
    if not found:
        say(f"the central manager {HEAD} is a container, not a VM of this hypervisor: nothing to back up "
            "(backup.yml, docs/backup.md, backs up the VMs of a site's hypervisors)")
        return
    raise TestbedError(f"a libvirt domain named {HEAD} exists that the demo did not create; remove it")


def status(values: dict) -> str:
    dest = WORKDIR / "status"
    values = {**values, "status_dir": str(dest), "backup_summary_dir": str(WORKDIR / "backup")}
    playbook("hepinfra.cloud.status", extra=values)
    return (dest / "status.txt").read_text()


def up() -> int:
    steps = Steps(8)
    WORKDIR.mkdir(parents=True, exist_ok=True)
    (WORKDIR / "ansible.log").write_text("")
    for stale in ("scale-history.jsonl", "workers-audit.jsonl"):
        (WORKDIR / stale).unlink(missing_ok=True)
    print(f"hepinfra.cloud demo: every ansible-playbook output goes to {(WORKDIR / 'ansible.log').relative_to(REPO)}")
    try:
        steps.start("Hosts: demo-head (host network, HTCondor on the workers' bridge), demo-squid, demo-monitor")
        guest.daemon_up()
        hosts_up()
        steps.start("Permanent services: hepinfra.cloud.site (HTCondor, squid, shoal, ganglia)")
        site()
        steps.start("Worker image: hepinfra.cloud.worker_image (Debian 13, HTCondor, cloud-init)")
        image_dir = worker_image()
        steps.start("Local libvirt cloud: hepinfra.cloud.images uploads the worker image")
        boot = local_cloud(image_dir)
        steps.start(f"Jobs: {JOBS} jobs submitted on {HEAD}")
        cluster = submit()
        values = scale_vars(boot)
        steps.start("Scaling: hepinfra.cloud.scale cycles until the jobs ran and the workers retired")
        figures = scaling(values)
        ran_on = sorted(set(HEAD_POOL.run(["sh", "-c", "cat out/job.*"], user=SUBMIT_USER).stdout.split()) - {"ran", "on"})
        say(f"{figures['cycles']} cycles in {figures['seconds']:.0f} s; {figures['launched']} workers launched and "
            f"{figures['retired']} retired; the jobs of cluster {cluster} ran on: {', '.join(ran_on)}")
        steps.start("Backup: the central manager's VM")
        backup()
        steps.start("Status: hepinfra.cloud.status (HTML page and summary)")
        summary = status(values)
        steps.finish()
    except TestbedError as exc:
        steps.finish()
        print(f"\ndemo failed: {exc}\nEverything is left running for inspection; 'make demo-clean' removes it.",
              file=sys.stderr)
        return 1
    print("\n" + summary.rstrip())
    print(f"\nhepinfra.cloud demo finished in {steps.elapsed():.0f} s:")
    for title, took in steps.done:
        print(f"  {took:6.0f} s  {title.split(':')[0]}")
    conf = podman.containers_conf()
    print(f"  status page:  {(WORKDIR / 'status' / 'index.html').relative_to(REPO)}")
    print(f"  inventory:    {(WORKDIR / 'inventory.yml').relative_to(REPO)}; scaling variables: "
          f"{(WORKDIR / 'vars-scale.json').relative_to(REPO)}")
    print(f"  a shell:      CONTAINERS_CONF={conf} podman exec -it {HEAD} bash   (condor_q, condor_status)")
    print("  remove it all: make demo-clean")
    return 0


def clean() -> int:
    conn_ok = run(["virsh", "-c", guest.URI, "list", "--name"], check=False, timeout=60).returncode == 0
    if conn_ok:
        for name in run(["virsh", "-c", guest.URI, "list", "--all", "--name"], timeout=60).stdout.split():
            if name.startswith(f"{GROUP}--{CLOUD}--"):
                run(["virsh", "-c", guest.URI, "destroy", name], check=False, timeout=60)
                run(["virsh", "-c", guest.URI, "undefine", name, "--nvram"], check=False, timeout=60)
                log(f"removed worker {name}")
        if run(["virsh", "-c", guest.URI, "pool-info", STORAGE_POOL], check=False, timeout=60).returncode == 0:
            run(["virsh", "-c", guest.URI, "pool-destroy", STORAGE_POOL], check=False, timeout=60)
        pool.network_down(LIBVIRT_NETWORK)
    shutil.rmtree(STORAGE_DIR, ignore_errors=True)
    for name in [HEAD, *HOSTS]:
        podman.host_down(name)
    names = podman.podman("network", "ls", "--filter", f"label={LABEL}", "--format", "{{.Name}}").stdout.split()
    if PODMAN_NETWORK in names:
        podman.podman("network", "rm", "-f", PODMAN_NETWORK)
    podman.remove_idle_chains()
    if conn_ok and not (state_dir() / "pool.json").exists() and not guest.owned_guests():
        guest.daemon_down()       # only a libvirtd the test bed started itself, and only when idle
    shutil.rmtree(WORKDIR, ignore_errors=True)
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
