"""Real libvirt + QEMU domains, restic 0.18 and a SeaweedFS S3 server, started for the session.

The modules run the way users run them: ansible-playbook on localhost with the collection
from ANSIBLE_COLLECTIONS_PATH (the Makefile copies it there). Most tests use domains that
never boot an OS (they sit in firmware, start at once and keep their disks open like any
guest); the consistency test boots a real guest.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from hepinfra_testbed import guest, storage
from hepinfra_testbed.common import LIBVIRT_NS, run

PASSWORD = "restic-test-password-8c1f"
URI = guest.URI


@dataclass
class Repo:
    """A repository the tests write to, with the module arguments that open it."""

    url: str
    args: dict
    env: dict = field(default_factory=dict)

    def restic(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, RESTIC_REPOSITORY=self.url, RESTIC_PASSWORD=PASSWORD, **self.env)
        return subprocess.run([str(storage.restic_binary()), *argv], env=env, capture_output=True, text=True,
                              check=check, timeout=300)

    def snapshots(self, *tags: str) -> list[dict]:
        argv = ["snapshots", "--json"]
        for tag in tags:
            argv += ["--tag", tag]
        return json.loads(self.restic(*argv).stdout or "[]")


@pytest.fixture(scope="session")
def s3():
    guest.daemon_up()
    info = storage.s3_up()
    try:
        yield info
    finally:
        storage.s3_down()


@pytest.fixture(scope="session")
def restic_path() -> str:
    return str(storage.restic_binary())


@pytest.fixture
def repo(s3, restic_path) -> Repo:
    """A fresh repository (its own prefix) in the test bucket."""
    url = s3.repository("hepinfra-backups", "t-" + uuid.uuid4().hex[:10])
    args = {
        "repository": url,
        "repository_password": PASSWORD,
        "s3_access_key_id": s3.access_key,
        "s3_secret_access_key": s3.secret_key,
        "restic_path": restic_path,
        "repository_timeout": 30,
    }
    return Repo(url, args, {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key})


# -- domains ----------------------------------------------------------------------------------

def _conn():
    import libvirt  # pylint: disable=import-outside-toplevel

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt.open(URI)


@dataclass
class Domain:
    name: str
    disks: dict  # target -> path
    directory: Path

    def virsh(self, *argv: str, check: bool = True) -> str:
        return run(["virsh", "-c", URI, *argv], check=check).stdout

    def sources(self, inactive: bool = False) -> dict:
        argv = ["domblklist", self.name, "--details"] + (["--inactive"] if inactive else [])
        out = self.virsh(*argv)
        rows = [line.split() for line in out.splitlines()[2:] if line.strip()]
        return {row[2]: row[3] for row in rows if len(row) >= 4}

    def domid(self) -> str:
        return self.virsh("domid", self.name).strip()

    def state(self) -> str:
        return self.virsh("domstate", self.name).strip()

    def leftovers(self) -> list[str]:
        """Overlay files of the backup module anywhere in the test's directory (overlay_dir included)."""
        return sorted(glob.glob(str(self.directory.parent / "**" / "*.hepinfra-backup-*"), recursive=True))

    def libvirt_snapshots(self) -> list[str]:
        return self.virsh("snapshot-list", self.name, "--name").split()

    def checkpoints(self) -> list[str]:
        return self.virsh("checkpoint-list", self.name, "--name").split()


def image_sha256(path: str | Path) -> str:
    """SHA-256 of a disk image's contents, flattened to raw (what a restore must give back).

    Read with qemu-img's --force-share, since a running domain holds its images locked.
    """
    import tempfile  # pylint: disable=import-outside-toplevel

    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        raw = Path(tmp) / "image.raw"
        run(["qemu-img", "convert", "--force-share", "-O", "raw", path, raw])
        return run(["sha256sum", raw]).stdout.split()[0]


def make_image(path: Path, size_mib: int, writes: list[tuple[int, int, str]], fmt: str = "qcow2",
               backing: Path | None = None) -> Path:
    """A disk image with known contents: writes = [(offset MiB, length MiB, pattern byte or 'random')]."""
    if backing is not None:
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, path])
    else:
        run(["qemu-img", "create", "-q", "-f", fmt, path, f"{size_mib}M"])
    for offset, length, pattern in writes:
        if pattern == "random":
            data = path.with_suffix(".rnd")
            run(["dd", "if=/dev/urandom", f"of={data}", "bs=1M", f"count={length}", "status=none"])
            run(["qemu-io", "-f", fmt if backing is None else "qcow2", "-c", f"write -s {data} {offset}M {length}M", path])
            data.unlink()
        else:
            run(["qemu-io", "-f", fmt if backing is None else "qcow2", "-c", f"write -P {pattern} {offset}M {length}M", path])
    return path


def domain_xml(name: str, disks: list[tuple[str, Path, str, bool]], agent: bool) -> str:
    devices = []
    for target, path, fmt, readonly in disks:
        devices.append(
            f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{escape(str(path))}'/>"
            f"<target dev='{target}' bus='virtio'/>{'<readonly/>' if readonly else ''}</disk>"
        )
    if agent:
        devices.append("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>")
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <metadata><tb:testbed xmlns:tb='{LIBVIRT_NS}'>{escape(name[len(guest.PREFIX) + 1:])}</tb:testbed></metadata>
  <memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>{''.join(devices)}<interface type='user'><mac address='52:54:00:aa:bb:01'/><model type='virtio'/></interface></devices>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
</domain>"""


@pytest.fixture
def firmware_domain(tmp_path, s3):  # s3: the session's libvirtd is up
    """Factory: a domain that never boots an OS, on a qcow2 overlay over a read-only base, plus a raw disk."""
    created = []

    def make(short: str, *, running: bool = True, agent: bool = True, vda_random_mib: int = 0) -> Domain:
        name = guest.domain_name("bk-" + short)
        directory = tmp_path / short
        directory.mkdir()
        base = make_image(directory / "base.qcow2", 64, [(0, 8, "0x11"), (32, 4, "0x22")])
        base.chmod(0o444)
        writes = [(4, 1, "0x33")] + ([(8, vda_random_mib, "random")] if vda_random_mib else [])
        vda = make_image(directory / "vda.qcow2", 0, writes, backing=base)
        vdb = make_image(directory / "vdb.raw", 16, [(0, 1, "0x44")], fmt="raw")
        conn = _conn()
        try:
            dom = conn.defineXML(domain_xml(name, [("vda", vda, "qcow2", False), ("vdb", vdb, "raw", False)], agent))
            created.append(name)
            if running:
                dom.create()
        finally:
            conn.close()
        return Domain(name, {"vda": str(vda), "vdb": str(vdb)}, directory)

    yield make
    for name in created:
        remove_domain(name)


def remove_domain(name: str) -> None:
    conn = _conn()
    try:
        try:
            dom = conn.lookupByName(name)
        except Exception:  # noqa: BLE001 - already gone
            return
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    finally:
        conn.close()


@pytest.fixture
def pool(tmp_path, s3):
    """Factory: a transient directory storage pool, destroyed afterwards."""
    names = []

    def make(short: str) -> tuple[str, Path]:
        name = f"{guest.PREFIX}-bk-{short}"
        path = tmp_path / f"pool-{short}"
        path.mkdir()
        run(["virsh", "-c", URI, "pool-create-as", name, "dir", "--target", path])
        names.append(name)
        return name, path

    yield make
    for name in names:
        run(["virsh", "-c", URI, "pool-destroy", name], check=False)


@pytest.fixture
def tmpfs(tmp_path):
    """Factory: a small tmpfs (for disk-full cases), unmounted afterwards."""
    mounts = []

    def make(short: str, size: str) -> Path:
        path = tmp_path / f"tmpfs-{short}"
        path.mkdir()
        run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path])
        mounts.append(path)
        return path

    yield make
    for path in mounts:
        run(["umount", "-l", path], check=False)
