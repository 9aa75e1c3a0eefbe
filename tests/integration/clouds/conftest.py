"""Real clouds for the image and user-data tests: a Keystone with two Glance regions, and libvirt pools.

OpenStack: Keystone plus one Glance per region (hepinfra_testbed.openstack), users ``alpha``
(project alpha, RegionOne) and ``beta`` (project beta, RegionTwo): two clouds that share
nothing. libvirt: the testbed's private libvirtd with transient directory pools.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hepinfra_testbed import guest, openstack
from hepinfra_testbed.common import run

URI = guest.URI


@pytest.fixture(scope="session")
def cloud_services(libvirt_daemon):  # pylint: disable=unused-argument
    """Keystone + Glance x2 (and libvirtd), for the session."""
    info = openstack.up()
    try:
        yield info
    finally:
        openstack.down()


@pytest.fixture
def pools(libvirt_pools, cloud_services):  # pylint: disable=unused-argument
    """Factory: a transient directory pool and its libvirt cloud definition (with OpenStack up)."""
    return libvirt_pools


@pytest.fixture
def image_file(tmp_path):
    """Factory: a real qcow2 (or raw) image with content chosen by a seed byte and a random block."""

    def make(label: str, pattern: int, size_mib: int = 64, fmt: str = "qcow2", random_mib: int = 2) -> Path:
        path = tmp_path / f"{label}.{fmt}"
        run(["qemu-img", "create", "-q", "-f", fmt, path, f"{size_mib}M"])
        run(["qemu-io", "-f", fmt, "-c", f"write -P {pattern} 0 4M", path])
        noise = tmp_path / f"{label}.noise"
        noise.write_bytes(hashlib.sha256(label.encode()).digest() * (random_mib << 15))
        run(["qemu-io", "-f", fmt, "-c", f"write -s {noise} 8M {random_mib}M", path])
        noise.unlink()
        return path

    return make
