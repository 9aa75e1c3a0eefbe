"""A libvirt cloud for the worker tests: a transient pool holding a worker image, and a clean audit log.

The image is a small blank qcow2: the domains these tests launch never boot an operating
system (they sit in firmware), which is enough for counts, ownership, concurrency and
deletion. The real guest that joins the pool is in test_worker_guest.py.
"""

from __future__ import annotations

import libvirt
import pytest
from hepinfra_testbed import guest
from hepinfra_testbed.common import run

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
