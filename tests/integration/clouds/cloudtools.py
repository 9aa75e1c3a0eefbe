"""Helpers of the cloud tests: cloud definitions, image content checks, Glance and pool listings."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path


def os_cloud(info, user: str, name: str | None = None, **extra) -> dict:
    return dict({"name": name or user, "type": "openstack",
                 "openstack": {"auth": info.auth(user), "region_name": info.region(user)}}, **extra)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def same_guest_content(left: Path, right: Path) -> bool:
    """Whether two images give a guest the same disk (whatever their formats)."""
    return subprocess.run(["qemu-img", "compare", "-q", str(left), str(right)], check=False).returncode == 0


def sdk(info, user: str):
    import openstack as openstacksdk  # pylint: disable=import-outside-toplevel

    return openstacksdk.connect(auth=info.auth(user), region_name=info.region(user), load_yaml_config=False,
                                load_envvars=False)


def glance_images(info, user: str, name: str) -> list:
    """The images of the user's project that carry hepinfra_image=name, newest version first."""
    conn = sdk(info, user)
    try:
        images = [i for i in conn.image.images() if (i.properties or {}).get("hepinfra_image") == name]
        return sorted(images, key=lambda i: i.properties.get("hepinfra_version", ""), reverse=True)
    finally:
        conn.close()


def glance_download(info, user: str, image_id: str, dest: Path) -> Path:
    conn = sdk(info, user)
    try:
        with open(dest, "wb") as handle:
            conn.image.download_image(image_id, output=handle)
    finally:
        conn.close()
    return dest


def pool_volumes(path: Path) -> list[str]:
    return sorted(entry.name for entry in path.iterdir())


def glance_raw(info, user: str, image_id: str) -> dict:
    """The image as Glance's API shows it (every property flat)."""
    conn = sdk(info, user)
    try:
        return conn.image.get(f"/images/{image_id}").json()
    finally:
        conn.close()
