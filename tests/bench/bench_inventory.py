"""make bench-inventory: hepinfra.cloud.cmdb vs netbox.netbox.nb_inventory on one real NetBox.

10,000 hosts (5,000 devices + 5,000 VMs, each with a primary IP, tags and custom fields)
are loaded from a database snapshot (built once with netbox_bulk.py, then cached). Both
plugins then run `ansible-inventory --list` against the same NetBox in the same run: cold
(--flush-cache) and from their cache, several times each. Figures are printed, never
asserted: wall time (median) and peak memory (largest resident set) of the whole command.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hepinfra_testbed import netbox
from hepinfra_testbed.common import cache_dir, log, recipe_hash, run

HERE = Path(__file__).parent
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
DEVICES = int(os.environ.get("BENCH_DEVICES", "5000"))
VMS = int(os.environ.get("BENCH_VMS", "5000"))
LIST = os.environ.get("BENCH_LIST", "1") == "1"  # also time the whole ansible-inventory --list once


def bench_dump() -> Path:
    """The NetBox snapshot with the benchmark's hosts (built on first use, then cached)."""
    code = (HERE / "netbox_bulk.py").read_text().replace("DEVICES = 5000", f"DEVICES = {DEVICES}").replace("VMS = 5000", f"VMS = {VMS}")
    dump = cache_dir() / "netbox" / f"bench-{netbox.NETBOX_VERSION}-{recipe_hash(code, netbox.base_dump_path().name)}-{DEVICES}-{VMS}.dump"
    if dump.exists():
        return dump
    instance = netbox.up()
    log(f"creating {DEVICES} devices and {VMS} virtual machines in NetBox (once; kept as {dump.name})")
    run([str(netbox.venv() / "bin/netbox"), "shell"], input_text=code, env={"NETBOX_ROOT": instance.root}, timeout=1800)
    netbox.snapshot(dump)
    return dump


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, peak resident MiB, hosts) of one command that prints '<hosts> <seconds>'
    or writes ansible-inventory JSON to the file named after --output."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = [arg if arg != "{output}" else out.name for arg in argv]
        started = time.perf_counter()
        # GNU time reports the command's own peak resident set
        proc = subprocess.Popen(["/usr/bin/time", "-f", "maxrss_kib=%M", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{stderr[-3000:]}")
        peak_kib = int(stderr.rsplit("maxrss_kib=", 1)[1].split()[0])
        if "--list" in argv:
            hosts = len(json.loads(Path(out.name).read_text() or "{}").get("_meta", {}).get("hostvars", {}))
        else:
            hosts = int(stdout.split()[0])
    return wall, peak_kib / 1024, hosts


def main() -> int:
    dump = bench_dump()
    instance = netbox.up(dump)
    work = Path(tempfile.mkdtemp(prefix="bench-inventory-"))
    common = {"cache": True, "cache_plugin": "ansible.builtin.jsonfile", "cache_timeout": 3600}
    sources = {
        "hepinfra.cloud.cmdb": ("bench.cmdb.yml", {
            "plugin": "hepinfra.cloud.cmdb", "url": instance.url, "token": instance.token,
            "group_by": ["site", "role", "tag", "status"], "cache_connection": str(work / "cache-cmdb"), **common,
        }),
        "hepinfra.cloud.cmdb, host_variables: 4": ("lean.cmdb.yml", {
            "plugin": "hepinfra.cloud.cmdb", "url": instance.url, "token": instance.token,
            "group_by": ["site", "role", "tag", "status"], "host_variables": ["site", "role", "status", "tags"],
            "cache_connection": str(work / "cache-lean"), **common,
        }),
        "netbox.netbox.nb_inventory": ("bench.netbox.yml", {
            "plugin": "netbox.netbox.nb_inventory", "api_endpoint": instance.url, "token": instance.token,
            "group_by": ["sites", "device_roles", "tags", "status"], "config_context": False, "interfaces": False,
            "cache_connection": str(work / "cache-nb"), **common,
        }),
    }
    env = dict(os.environ, ANSIBLE_INVENTORY_UNPARSED_FAILED="true", ANSIBLE_NOCOLOR="1",
               ANSIBLE_INVENTORY_ENABLED="hepinfra.cloud.cmdb,netbox.netbox.nb_inventory,ansible.builtin.ini")
    loader = [sys.executable, str(HERE / "inventory_load.py")]
    rows: list[tuple[str, str, list]] = []
    figures: dict[tuple[str, str], float] = {}
    for name, (filename, config) in sources.items():
        path = work / filename
        path.write_text(json.dumps(config))
        for mode in ("flush", "cache"):
            label = "cold" if mode == "flush" else "cached"
            samples = [measure([*loader, str(path), mode], env) for _run in range(REPEAT)]
            rows.append((name, f"inventory load, {label}", samples))
            figures[(name, label)] = statistics.median(s[0] for s in samples)
        if LIST:
            for label, extra in (("cold", ["--flush-cache"]), ("cached", [])):
                sample = measure(["ansible-inventory", "-i", str(path), "--list", *extra, "--output", "{output}"], env)
                rows.append((name, f"ansible-inventory --list, {label}", [sample]))
    netbox.down()

    print()
    print(f"NetBox {netbox.NETBOX_VERSION} on this machine, {DEVICES} devices + {VMS} virtual machines; "
          f"inventory load = InventoryManager as ansible-playbook builds it (median of {REPEAT}), --list once")
    print(f"{'plugin':42} {'measure':34} {'wall s':>8} {'peak MiB':>9} {'hosts':>7}")
    for name, what, samples in rows:
        wall = statistics.median(s[0] for s in samples)
        peak = statistics.median(s[1] for s in samples)
        hosts = samples[0][2]
        print(f"{name:42} {what:34} {wall:8.2f} {peak:9.0f} {hosts:7d}")
    ours, theirs = "hepinfra.cloud.cmdb", "netbox.netbox.nb_inventory"
    print(f"cold load: nb_inventory / hepinfra.cloud.cmdb = {figures[(theirs, 'cold')] / figures[(ours, 'cold')]:.1f}x (target >= 10x)")
    print(f"cached load: {figures[(ours, 'cached')]:.2f} s, {figures[(ours + ', host_variables: 4', 'cached')]:.2f} s with 4 variables (target < 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
