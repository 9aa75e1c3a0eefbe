"""Queue-driven scaling end to end: playbooks/scale.yml (hepinfra.cloud.scale) on the test bed's real
HTCondor pool and libvirt clouds.

- Real workers: jobs are submitted, scale.yml cycles launch workers from the image of
  playbooks/worker_image.yml, the workers join the pool and run the jobs, and once idle past
  keep-alive the cycles drain and delete them: empty queue, no worker, no overlay or seed left.
- Decision on real services without booting (domains sit in firmware): jobs no flavor fits are
  reported and nothing is launched for them; a cloud at its limit passes the launch to the next
  cloud by priority; two cycles started together launch once.

The OpenStack side (Nova's flavors, limits and quota) is in test_worker_openstack.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest
from hepinfra_testbed import guest, podman
from hepinfra_testbed.common import wait_for

GROUP = "g1"


def raw(text: str) -> str:
    return "{% raw %}" + text + "{% endraw %}"


class Scale:
    """Runs playbooks/scale.yml as a site would: ansible-playbook hepinfra.cloud.scale -e @vars."""

    def __init__(self, htcondor_pool, clouds: list[dict], tmp_path: Path, **extra) -> None:
        self.dir = tmp_path
        self.history = tmp_path / "history.jsonl"
        self.audit = tmp_path / "audit.jsonl"
        self.vars = {
            "hepinfra_clouds": clouds,
            "scale_groups": [{"name": GROUP, "accounting_groups": ["group_g1"], "image": "wimg"}],
            "scale_condor": {"trust_domain": htcondor_pool.trust_domain,
                             "central_manager": htcondor_pool.central_manager,
                             "command_prefix": ["podman", "exec", htcondor_pool.container], "token_lifetime": 7200},
            "scale_history": str(self.history), "scale_audit_log": str(self.audit),
            "scale_lock_file": str(tmp_path / "scale.lock"), "scale_max_lifetime": 86400,
        }
        self.vars.update(extra)
        self.outputs: list[str] = []
        self.count = 0

    def start(self, **overrides) -> subprocess.Popen:
        self.count += 1
        values = self.dir / f"vars{self.count}.json"
        values.write_text(json.dumps({**self.vars, **overrides}))
        env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_PYTHON_INTERPRETER=sys.executable,
                   CONTAINERS_CONF=str(podman.containers_conf()), ANSIBLE_LOCAL_TEMP=str(self.dir / f"tmp{self.count}"))
        return subprocess.Popen(["ansible-playbook", "-i", "localhost,", "-c", "local", "hepinfra.cloud.scale",
                                 "-e", f"@{values}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env)

    def finish(self, proc: subprocess.Popen, expect_ok: bool = True) -> str:
        output = proc.communicate(timeout=1200)[0]
        self.outputs.append(output)
        if expect_ok and proc.returncode != 0:
            pytest.fail("scale.yml failed (exit %d):\n%s" % (proc.returncode, output[-5000:]), pytrace=False)
        return output

    def cycle(self, **overrides) -> dict:
        """One cycle; returns its history line."""
        before = len(self.lines())
        self.finish(self.start(**overrides))
        lines = self.lines()
        assert len(lines) == before + 1, "the cycle wrote no history line"
        return lines[-1]

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.history.read_text().splitlines()] if self.history.exists() else []


def cycles_at_the_lock(lock: Path) -> list[str]:
    """PIDs of hepinfra.cloud.scale module processes (ansible-playbook runs them as AnsiballZ_scale.py)
    that have the lock file open: they are trying to take it."""
    done = subprocess.run(["pgrep", "-f", r"^\S*python\S* \S*/AnsiballZ_scale\.py$"], capture_output=True, text=True,
                          check=False)
    waiting = []
    for pid in done.stdout.split():
        try:
            if any(os.path.realpath(fd) == str(lock) for fd in Path(f"/proc/{pid}/fd").iterdir()):
                waiting.append(pid)
        except OSError:
            continue                                   # ended meanwhile
    return waiting


def our_domains(conn) -> list[str]:
    return sorted(d.name() for d in conn.listAllDomains(0) if d.name().startswith(GROUP + "--"))


def queue(htcondor_pool, *attributes: str) -> list[list[str]]:
    out = htcondor_pool.run(["condor_q", "-allusers", "-af", *attributes], user=htcondor_pool.submit_user).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def jobs(count: int, cpus: int = 1, memory: int = 64, seconds: int = 45, group: str = "group_g1.prod") -> str:
    return (f"executable = /bin/sleep\ntransfer_executable = false\narguments = {seconds}\n"
            f"accounting_group = {group}\naccounting_group_user = submitter\n"
            f"request_cpus = {cpus}\nrequest_memory = {memory}\nrequest_disk = 1024\nqueue {count}\n")


def test_scale_launches_where_jobs_wait_and_retires_the_workers_once_idle(htcondor_pool, boot_files,
                                                                          libvirt_cloud_factory, tmp_path):
    # pylint: disable=too-many-locals
    disk, kernel, initrd, where = boot_files
    cloud, path = libvirt_cloud_factory(disk, flavors={"w1.guest": {"vcpus": 2, "memory_mb": 1024},
                                                       "w1.huge": {"vcpus": 2, "memory_mb": 1536}},
                                        network=htcondor_pool.network, console_log=str(where),
                                        boot={"kernel": str(kernel), "initrd": str(initrd),
                                              "cmdline": "root=/dev/vda rw console=ttyS0 quiet"})
    scale = Scale(htcondor_pool, [cloud], tmp_path,
                  scale_policy={"keep_alive": 30, "job_alive": 600, "come_alive": 900},
                  scale_user_data=[
                      {"type": "file", "path": "/etc/condor/config.d/50-hepinfra.conf",
                       "content": raw("{{ condor_config }}")},
                      {"type": "shell", "content": "#!/bin/sh\nsystemctl restart condor\n", "template": False}],
                  scale_user_data_context={"condor_config": htcondor_pool.execute_config})
    htcondor_pool.run(["condor_rm", "-all"], user=htcondor_pool.submit_user, check=False)
    conn = libvirt.open(guest.URI)
    started = time.monotonic()
    try:
        # 4 one-core jobs: two per 2-core worker, so 2 workers; a job that asks for 4 GiB fits no flavor.
        cluster = htcondor_pool.submit(jobs(4))
        unfit = htcondor_pool.submit(jobs(1, memory=4096))
        first = scale.cycle()
        assert first["jobs"][GROUP] == {"idle": 5, "running": 0}
        assert first["launched"] == {"lv": {GROUP: 2}}
        assert first["unfit"] == {GROUP: 1}
        workers = our_domains(conn)
        assert len(workers) == 2
        # The next cycle finds them starting: they cover the jobs, nothing more is launched.
        second = scale.cycle()
        assert second["launched"] == {} and second["workers"]["lv"] == {"starting": 2}
        assert our_domains(conn) == workers

        def done():
            line = scale.cycle()
            return line if not [row for row in queue(htcondor_pool, "ClusterId") if row[0] == str(cluster)] else None
        wait_for(done, timeout=900, interval=5, what="the jobs to run on the launched workers and complete")
        ran_on = {row[1].split("@")[-1].split(".")[0]
                  for row in (line.split() for line in htcondor_pool.run(
                      ["condor_history", "-af", "ExitCode", "LastRemoteHost", str(cluster)],
                      user=htcondor_pool.submit_user).stdout.splitlines()) if row[0] == "0"}
        assert len(ran_on) >= 1 and ran_on <= set(workers), ran_on
        print(f"jobs done {time.monotonic() - started:.0f} s after the first cycle")

        # Idle past keep-alive: drained and deleted by the cycles, with every disk of theirs.
        def retired():
            scale.cycle()
            return not our_domains(conn)
        wait_for(retired, timeout=600, interval=5, what="the idle workers to be retired")
        assert not [v for v in path.iterdir() if v.name.startswith(GROUP + "--")]
        lines = scale.lines()
        assert any(line["jobs"][GROUP]["running"] > 0 for line in lines)
        assert any(line["workers"].get("lv", {}).get("busy") for line in lines)
        assert sum(line["drained"] for line in lines) == 2 and sum(line["deleted"] for line in lines) == 2
        assert all(line["unfit"] == {GROUP: 1} for line in lines)   # never launched for
        assert sum(sum(per.values()) for line in lines for per in line["launched"].values()) == 2
        records = [json.loads(line) for line in scale.audit.read_text().splitlines()]
        drains = [r for r in records if r["event"] == "drain"]
        assert sorted(r["worker"] for r in drains) == workers
        assert all(r["reason"].startswith("idle longer than keep_alive (30 s)") for r in drains), drains
        last = scale.cycle()
        assert last["workers"] == {"lv": {}} and last["jobs"][GROUP] == {"idle": 1, "running": 0}
        print(f"{len(lines)} cycles; workers retired {time.monotonic() - started:.0f} s after the first cycle")
    finally:
        htcondor_pool.run(["condor_rm", "-all"], user=htcondor_pool.submit_user, check=False)
        conn.close()
    assert unfit


def test_unfit_jobs_cloud_limits_and_concurrent_cycles(htcondor_pool, libvirt_cloud, libvirt_pools,
                                                       run_module, tmp_path):
    """Workers that never boot are enough here: the decision, the limits and the lock."""
    first, path = libvirt_cloud                                  # "lv", priority 10, w1.tiny and w1.small
    second, path2 = libvirt_pools("lv2", priority=1)
    second["libvirt"].update(domain_type="qemu", flavors=first["libvirt"]["flavors"])
    image = tmp_path / "wimg.qcow2"                              # the blank image libvirt_cloud made
    uploaded = run_module("hepinfra.cloud.image", {"clouds": [second], "name": "wimg", "src": str(image),
                                                   "checksum_cache": ""})
    assert uploaded.rc == 0 and not uploaded.failed, uploaded.output
    first["limits"] = {"instances": 1}
    htcondor_pool.run(["condor_rm", "-all"], user=htcondor_pool.submit_user, check=False)
    conn = libvirt.open(guest.URI)
    # These workers never boot: the flavors' whole memory is for jobs (no reserve for a kernel).
    scale = Scale(htcondor_pool, [first, second], tmp_path, scale_policy={"come_alive": 3600, "memory_reserve_mb": 0},
                  scale_condor={"tokens": False, "command_prefix": ["podman", "exec", htcondor_pool.container]})
    try:
        # Jobs that fit no flavor (2 cores; 4 GiB): reported, nothing launched.
        htcondor_pool.submit(jobs(2, cpus=2))
        htcondor_pool.submit(jobs(1, memory=4096))
        decided = run_module("hepinfra.cloud.demand_info", {
            "clouds": scale.vars["hepinfra_clouds"], "groups": scale.vars["scale_groups"],
            "condor": scale.vars["scale_condor"]}, env={"CONTAINERS_CONF": str(podman.containers_conf())})
        assert decided.rc == 0 and not decided.failed, decided.output[-3000:]
        assert decided.result["plan"]["launch"] == [] and decided.result["unfit"] == {GROUP: 3}
        assert sorted((u["cpus"], u["memory_mb"], u["jobs"]) for u in decided.result["plan"]["unfit"]) == \
            [(1, 4096, 1), (2, 64, 2)]
        line = scale.cycle()
        assert line["launched"] == {} and line["unfit"] == {GROUP: 3} and our_domains(conn) == []
        # The playbook's decide-only mode: the same report, no lock, no history, nothing launched.
        output = scale.finish(scale.start(scale_check_only=True))
        assert re.search(r'"unfit": \{\s*"g1": 3\s*\}', output), output[-3000:]
        assert "Decide only" in output and len(scale.lines()) == 1 and our_domains(conn) == []

        # 3 jobs of 128 MiB: one per w1.small worker. "lv" (priority 10) takes one, its limit;
        # "lv2" gets the rest. Two cycles started together launch once: the second waits for the
        # lock and finds the first one's workers starting.
        htcondor_pool.submit(jobs(3, memory=128))
        # A cycle takes a second here, less than ansible-playbook takes to start: so that the two
        # surely overlap, the test holds the lock (as a slow cycle would) until both wait for it.
        holder = os.open(tmp_path / "scale.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(holder, fcntl.LOCK_EX)
        try:
            runs = [scale.start(), scale.start()]
            wait_for(lambda: len(cycles_at_the_lock(tmp_path / "scale.lock")) == 2 or any(p.poll() is not None for p in runs),
                     timeout=120, interval=0.2, what="both cycles to wait for the lock")
            assert not any(p.poll() is not None for p in runs), "a cycle ended while the lock was held"
        finally:
            fcntl.flock(holder, fcntl.LOCK_UN)
            os.close(holder)
        for proc in runs:
            scale.finish(proc)
        lines = scale.lines()[-2:]
        launched = [line["launched"] for line in lines]
        assert {"lv": {GROUP: 1}, "lv2": {GROUP: 2}} in launched and {} in launched, launched
        # Both waited; the second to get the lock found the first one's workers starting.
        assert lines[1]["launched"] == {} and all(line["lock_waited"] > 0 for line in lines), lines
        names = our_domains(conn)
        assert len(names) == 3
        assert sorted(name.split("--")[1] for name in names) == ["lv", "lv2", "lv2"]
        flavors = {conn.lookupByName(name).maxMemory() // 1024 for name in names}
        assert flavors == {128}                                   # the smallest flavor that fits 128 MiB
        again = scale.cycle()
        assert again["launched"] == {} and again["workers"] == {"lv": {"starting": 1}, "lv2": {"starting": 2}}

        # Nothing registers: past come-alive the cycle deletes them and their disks, and with the
        # jobs gone nothing new is launched.
        htcondor_pool.run(["condor_rm", "-all"], user=htcondor_pool.submit_user, check=False)
        gone = scale.cycle(scale_policy={"come_alive": 0, "memory_reserve_mb": 0})
        assert gone["deleted"] == 3 and gone["launched"] == {} and our_domains(conn) == []
        assert not [v for p in (path, path2) for v in p.iterdir() if v.name.startswith(GROUP + "--")]
    finally:
        htcondor_pool.run(["condor_rm", "-all"], user=htcondor_pool.submit_user, check=False)
        conn.close()
