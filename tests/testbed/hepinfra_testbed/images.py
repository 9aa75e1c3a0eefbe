"""Debian host images for podman test hosts, built with debootstrap and cached by recipe."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .common import LABEL, TestbedError, cache_dir, log, recipe_hash, run

MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"

BASE_PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    # Ansible's apt module needs it for check mode (it installs it itself only in a real run).
    "python3-apt",
    "sudo",
    "ca-certificates",
    "iproute2",
    "procps",
    "curl",
    "gnupg",
]

# Documentation and translations are never read on test hosts; leaving them out keeps
# every package install in a test faster.
NODOC = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""


@dataclass(frozen=True)
class HostRecipe:
    """What goes into one host image."""

    name: str
    suite: str
    packages: list[str] = field(default_factory=lambda: list(BASE_PACKAGES))

    @property
    def sources(self) -> str:
        return (
            "Types: deb\n"
            f"URIs: {MIRROR}\n"
            f"Suites: {self.suite} {self.suite}-updates\n"
            "Components: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            "Types: deb\n"
            f"URIs: {SECURITY_MIRROR}\n"
            f"Suites: {self.suite}-security\n"
            "Components: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )


HOSTS: dict[str, HostRecipe] = {
    # Debian 13: the platform every role is tested on. systemd 257 is the last release that
    # boots on the cgroup v1 hybrid layout of these machines, so no newer suite.
    "trixie": HostRecipe(name="trixie", suite="trixie"),
    # Debian 12: for packages trixie no longer ships (ganglia).
    "bookworm": HostRecipe(name="bookworm", suite="bookworm"),
}


def _build_rootfs(recipe: HostRecipe, root: Path) -> None:
    run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=" + ",".join(recipe.packages),
            recipe.suite,
            root,
            MIRROR,
        ],
        timeout=1800,
    )
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(recipe.sources)
    (root / "etc/dpkg/dpkg.cfg.d/01-hepinfra-nodoc").write_text(NODOC)
    # An empty machine-id makes systemd generate a fresh one in every container.
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    run(["chroot", root, "apt-get", "clean"])
    lists = root / "var/lib/apt/lists"
    for entry in lists.iterdir():
        if entry.is_file():
            entry.unlink()
    # The lists are empty on purpose; an old mtime makes apt's cache_valid_time see that.
    os.utime(lists, (0, 0))


def host_key(recipe: HostRecipe) -> str:
    return recipe_hash(asdict(recipe), recipe.sources, NODOC, _build_rootfs)


def rootfs_tarball(name: str) -> Path:
    """Build (or reuse) the zstd tarball of a host image's root filesystem."""
    recipe = _recipe(name)
    key = host_key(recipe)
    target = cache_dir() / "hosts" / f"{name}-{key}.tar.zst"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f"{name}-*.tar.zst"):
        stale.unlink()
    log(f"building host image {name} ({recipe.suite}) with debootstrap; takes about 2 minutes")
    with tempfile.TemporaryDirectory(prefix=f"hepinfra-tb-{name}-", dir=cache_dir()) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        _build_rootfs(recipe, root)
        partial = target.with_suffix(".partial")
        run(
            [
                "sh",
                "-c",
                'tar --numeric-owner -C "$1" -c . | zstd -q -T0 -o "$2"',
                "sh",
                root,
                partial,
            ],
            timeout=900,
        )
        partial.rename(target)
    log(f"host image {name} cached at {target.name} ({target.stat().st_size >> 20} MiB)")
    return target


# How a rootfs tarball becomes a podman image. The image deliberately carries no ownership
# label: containers inherit image labels, and a container someone else starts from this image
# must not look like one the testbed created.
IMPORT_CHANGES = ['CMD ["/sbin/init"]', "ENV container=podman", "STOPSIGNAL SIGRTMIN+3"]


def podman_image(name: str) -> str:
    """Make sure localhost/hepinfra-<name> exists in podman for the current recipe; return its name."""
    recipe = _recipe(name)
    key = recipe_hash(host_key(recipe), IMPORT_CHANGES)
    ref = f"localhost/hepinfra-{name}"
    probe = run(
        ["podman", "image", "inspect", "--format", "{{ index .Labels \"" + LABEL + ".recipe\" }}", ref],
        check=False,
    )
    if probe.returncode == 0 and probe.stdout.strip() == key:
        return ref
    tarball = rootfs_tarball(name)
    log(f"importing {tarball.name} into podman as {ref}")
    changes = [*IMPORT_CHANGES, f"LABEL {LABEL}.recipe={key}"]
    run(
        ["podman", "import", *(arg for change in changes for arg in ("--change", change)), tarball, f"{ref}:latest"],
        timeout=600,
    )
    return ref


def _recipe(name: str) -> HostRecipe:
    try:
        return HOSTS[name]
    except KeyError:
        raise TestbedError(f"unknown host image {name!r}; known: {', '.join(sorted(HOSTS))}") from None


def extract_rootfs(name: str, dest: Path) -> None:
    """Unpack a host image's root filesystem into dest (used to derive the guest image)."""
    tarball = rootfs_tarball(name)
    dest.mkdir(parents=True, exist_ok=True)
    run(["sh", "-c", 'zstd -q -d -c "$1" | tar --numeric-owner -C "$2" -x', "sh", tarball, dest], timeout=600)


def require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise TestbedError(f"missing {', '.join(missing)}: run 'make bootstrap' to install them")
