"""A libvirt cloud for the worker tests: a transient pool holding a worker image, and a clean audit log.

The image is a small blank qcow2: the domains these tests launch never boot an operating
system (they sit in firmware), which is enough for counts, ownership, concurrency and
deletion. The real guests that join the pool (test_worker_guest.py, test_scale.py) boot the
image of playbooks/worker_image.yml (fixtures worker_image, boot_files) and join the test
bed's pool (htcondor_pool, up once for the session).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import libvirt
import pytest
from hepinfra_testbed import guest, pool
from hepinfra_testbed.common import cache_dir, run


@pytest.fixture(scope="session")
def htcondor_pool():
    """The test bed's HTCondor pool, for every worker test of the session."""
    info = pool.pool_up()
    yield info
    pool.pool_down()


@pytest.fixture(scope="session")
def worker_image():
    """The worker image as the project builds it: playbooks/worker_image.yml, kept between runs in the
    testbed's cache (the playbook itself decides whether its recipe changed). A second run must change nothing."""
    where = cache_dir() / "worker-image"

    def play():
        done = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", "hepinfra.cloud.worker_image",
                               "-e", json.dumps({"worker_image_dir": str(where)})],
                              capture_output=True, text=True, check=False, timeout=1800,
                              env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_PYTHON_INTERPRETER=sys.executable))
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        return done.stdout

    play()
    again = play()
    assert re.search(r"localhost\s*: ok=\d+\s+changed=0\s", again), again[-2000:]
    return where


@pytest.fixture
def boot_files(worker_image):
    """The worker image, and its kernel and initrd where QEMU (its own user) can read them."""
    where = Path(tempfile.mkdtemp(prefix=f"{guest.PREFIX}-boot-"))
    where.chmod(0o711)
    for name in ("vmlinuz", "initrd.img"):
        shutil.copy(worker_image / name, where / name)
        (where / name).chmod(0o644)
    yield worker_image / "disk.qcow2", where / "vmlinuz", where / "initrd.img", where
    shutil.rmtree(where, ignore_errors=True)


#: The worker groups the tests use: their domains are removed before and after each test.
GROUPS = ("g1--", "g2--")

FLAVORS = {"w1.tiny": {"vcpus": 1, "memory_mb": 64}, "w1.small": {"vcpus": 1, "memory_mb": 128, "disk_gb": 1}}


@pytest.fixture
def libvirt_cloud_factory(libvirt_pools, run_module):
    """Factory (image file, **libvirt settings) -> (cloud definition, pool path): a libvirt cloud named ``lv``
    whose pool holds the image as ``wimg``. Worker domains of the test groups are removed before and after."""

    def make(image, **settings):
        cloud, path = libvirt_pools("lv", priority=10)
        cloud["libvirt"].update(domain_type="qemu", **settings)
        uploaded = run_module("hepinfra.cloud.image",
                              {"clouds": [cloud], "name": "wimg", "src": str(image), "checksum_cache": ""})
        assert uploaded.rc == 0 and not uploaded.failed, uploaded.output
        return cloud, path

    remove_workers()
    yield make
    remove_workers()


@pytest.fixture
def libvirt_cloud(libvirt_cloud_factory, tmp_path):
    """(cloud definition, pool path): a libvirt cloud with small flavors and a blank image (domains sit in firmware)."""
    image = tmp_path / "wimg.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", image, "64M"])
    return libvirt_cloud_factory(image, flavors=FLAVORS)


def remove_workers():
    """Destroy (and undefine) every domain the module may have left on the test bed's libvirtd."""
    conn = libvirt.open(guest.URI)
    try:
        for domain in conn.listAllDomains(0):
            if domain.name().startswith(GROUPS):
                persistent = domain.isPersistent()    # a transient domain is gone once destroyed
                if domain.isActive():
                    domain.destroy()
                if persistent:
                    domain.undefine()
    finally:
        conn.close()
