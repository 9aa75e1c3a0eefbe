"""A real booted guest, writing all the time, backed up live twice and restored consistent."""

from __future__ import annotations

import subprocess

import pytest
from hepinfra_testbed import guest
from hepinfra_testbed.common import run

BACKUP = "hepinfra.cloud.libvirt_backup"
RESTORE = "hepinfra.cloud.libvirt_restore"
NAME = "bk-guest"

WRITERS = (
    # a counter the guest bumps ten times a second, and 8 MiB rewritten over and over
    "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /var/tmp/counter.new && mv /var/tmp/counter.new /var/tmp/counter;"
    " sleep 0.1; done' >/dev/null 2>&1 &"
    " nohup sh -c 'while :; do dd if=/dev/urandom of=/var/tmp/churn bs=1M count=8 conv=fsync status=none; done'"
    " >/dev/null 2>&1 &"
)


def sh(command: str) -> str:
    code, out, err = guest.guest_exec(NAME, ["/bin/sh", "-c", command], timeout=600)
    assert code == 0, err
    return out.strip()


def probe() -> tuple[float, int]:
    uptime, counter = sh("cut -d' ' -f1 /proc/uptime; cat /var/tmp/counter").split()
    return float(uptime), int(counter)


@pytest.fixture
def booted_guest(s3):  # s3: the session's libvirtd is up
    name = guest.guest_up(NAME, memory_mib=768, vcpus=2)
    try:
        guest.wait_agent(NAME, timeout=600)
        yield name
    finally:
        guest.guest_down(NAME)


def test_running_guest_is_backed_up_without_stopping_and_restores_consistent(booted_guest, repo, pool, run_module):
    pattern_sha = sh("head -c 20971520 /dev/urandom > /var/tmp/pattern && sync && sha256sum /var/tmp/pattern").split()[0]
    sh(WRITERS)
    domid = run(["virsh", "-c", guest.URI, "domid", booted_guest]).stdout.strip()
    uptime0, counter0 = probe()

    first = run_module(BACKUP, dict(repo.args, domains=[booted_guest], quiesce="required"))
    assert not first.failed, first.msg
    entry = first.result["domains"][0]
    assert entry["quiesced"] is True and entry["running"] is True
    uptime1, counter1 = probe()
    assert uptime1 > uptime0 and counter1 > counter0  # the guest kept running and writing

    # change 1% of the 4 GiB disk, then back up again: only the change is added
    sh("head -c 41943040 /dev/urandom > /var/tmp/change && sync")
    second = run_module(BACKUP, dict(repo.args, domains=[booted_guest], quiesce="required"))
    assert not second.failed, second.msg
    uptime2, counter2 = probe()
    assert uptime2 > uptime1 and counter2 > counter1
    assert run(["virsh", "-c", guest.URI, "domid", booted_guest]).stdout.strip() == domid
    assert run(["virsh", "-c", guest.URI, "snapshot-list", booted_guest, "--name"]).stdout.split() == []
    full = {d["target"]: d for d in entry["disks"]}
    incremental = {d["target"]: d for d in second.result["domains"][0]["disks"]}
    assert 40 << 20 <= incremental["vda"]["bytes_added"] < full["vda"]["bytes_added"] / 3

    pool_name, pool_path = pool("guest")
    restored = run_module(RESTORE, dict(repo.args, domain=booted_guest, name="bk-guest-restored", pool=pool_name,
                                        format="raw", define=False))
    assert not restored.failed, restored.msg
    assert restored.result["run"] == second.result["domains"][0]["run"]
    image = pool_path / "bk-guest-restored-vda.img"
    # quiesced: the file system in the backup is clean, no journal to replay
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    counter = int(run(["debugfs", "-R", "cat /var/tmp/counter", image]).stdout.strip())
    assert counter1 < counter < counter2
    run(["debugfs", "-R", f"dump /var/tmp/pattern {pool_path / 'pattern'}", image])
    assert run(["sha256sum", pool_path / "pattern"]).stdout.split()[0] == pattern_sha
    assert run(["virsh", "-c", guest.URI, "domstate", booted_guest]).stdout.strip() == "running"
