# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure helpers of libvirt_backup and libvirt_restore: domain XML, names, tags, retention.

Nothing here talks to libvirt or restic, so unit tests call these functions directly.
Private to this collection.
"""

from __future__ import annotations

import datetime
import fnmatch
import os
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any, Iterable
from xml.etree import ElementTree

#: Every restic snapshot the modules write carries this tag.
TAG = "hepinfra-libvirt"
#: Temporary overlays are named <image>.<OVERLAY_MARK><run>.qcow2; recovery looks for the mark.
OVERLAY_MARK = ".hepinfra-backup-"
MANIFEST = "manifest.json"
RESERVED_TAG_KEYS = ("run", "kind", "domain", "disk")
MANIFEST_FORMAT = 1
RUN_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


@dataclass
class Disk:
    """One disk of a domain as its XML describes it."""

    target: str
    kind: str  # file, block, volume, network, ...
    device: str  # disk, cdrom, floppy, lun
    source: str | None
    driver_format: str | None
    readonly: bool
    backing: str | None = None  # the live XML's first backingStore source, if any

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_run_id(now: datetime.datetime | None = None) -> str:
    """Sortable and unique: 20261128T091500Z-1a2b3c."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def parse_disks(xml: str) -> list[Disk]:
    """The disks of a domain XML, in document order."""
    root = ElementTree.fromstring(xml)
    disks = []
    for element in root.findall("./devices/disk"):
        target = element.find("target")
        if target is None or not target.get("dev"):
            continue
        source = element.find("source")
        kind = element.get("type", "file")
        path = None
        if source is not None:
            path = source.get("file") or source.get("dev") or source.get("name") or source.get("volume")
        driver = element.find("driver")
        backing = element.find("backingStore/source")
        disks.append(Disk(
            target=target.get("dev"),
            kind=kind,
            device=element.get("device", "disk"),
            source=path,
            driver_format=driver.get("type") if driver is not None else None,
            readonly=element.find("readonly") is not None,
            backing=(backing.get("file") or backing.get("dev")) if backing is not None else None,
        ))
    return disks


def agent_connected(xml: str) -> bool:
    """True if the live XML shows a connected QEMU guest agent channel."""
    root = ElementTree.fromstring(xml)
    for target in root.findall("./devices/channel/target"):
        if target.get("name") == "org.qemu.guest_agent.0":
            return target.get("state") == "connected"
    return False


def domain_uuid(xml: str) -> str | None:
    element = ElementTree.fromstring(xml).find("uuid")
    return element.text if element is not None else None


def select_domains(names: Iterable[str], patterns: list[str], exclude: list[str]) -> list[str]:
    """Domain names matching any pattern (fnmatch) and no exclude pattern, sorted."""
    return sorted(
        name for name in names
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
        and not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)
    )


def select_disks(disks: list[Disk], targets: list[str] | None) -> tuple[list[Disk], list[str]]:
    """The disks to back up and the problems that stop it (as messages).

    By default every disk device (not cdrom or floppy) with a source; ``targets`` picks some.
    Network disks (rbd, iscsi, ...) cannot be read as files and are refused by name.
    """
    problems = []
    if targets:
        known = {disk.target for disk in disks}
        problems += ["there is no disk %s (disks: %s)" % (target, ", ".join(sorted(known)) or "none")
                     for target in targets if target not in known]
        chosen = [disk for disk in disks if disk.target in targets]
    else:
        chosen = [disk for disk in disks if disk.device in ("disk", "lun") and disk.source]
    for disk in chosen:
        if disk.kind not in ("file", "block"):
            problems.append("disk %s is a %s disk: only file and block disks can be backed up" % (disk.target, disk.kind))
        elif not disk.source:
            problems.append("disk %s has no source" % disk.target)
    return chosen, problems


def overlay_path(disk: Disk, run_id: str, overlay_dir: str | None) -> str:
    """Where the temporary overlay of a disk goes during a backup."""
    base = os.path.basename(disk.source or disk.target)
    directory = overlay_dir or os.path.dirname(disk.source or "") or "."
    return os.path.join(directory, "%s%s%s.qcow2" % (base, OVERLAY_MARK, run_id))


def is_backup_overlay(path: str | None) -> bool:
    """True if a path is a temporary overlay of this module (left by an interrupted run)."""
    if not path:
        return False
    name = os.path.basename(path)
    if not name.endswith(".qcow2") or OVERLAY_MARK not in name:
        return False
    return bool(RUN_PATTERN.match(name[name.rindex(OVERLAY_MARK) + len(OVERLAY_MARK):-len(".qcow2")]))


def snapshot_xml(name: str, disks: list[Disk], overlays: dict[str, str]) -> str:
    """A disk-only external snapshot: an overlay for each target in ``overlays``, none elsewhere."""
    root = ElementTree.Element("domainsnapshot")
    ElementTree.SubElement(root, "name").text = name
    element = ElementTree.SubElement(root, "disks")
    for disk in disks:
        if disk.target in overlays:
            entry = ElementTree.SubElement(element, "disk", name=disk.target, snapshot="external", type="file")
            ElementTree.SubElement(entry, "driver", type="qcow2")
            ElementTree.SubElement(entry, "source", file=overlays[disk.target])
        else:
            ElementTree.SubElement(element, "disk", name=disk.target, snapshot="no")
    return ElementTree.tostring(root, encoding="unicode")


def disk_filename(domain: str, target: str) -> str:
    """The name of a disk's file in its restic snapshot (restic stores it as /<name>)."""
    return "%s.%s.raw" % (domain, target)


def manifest_filename(domain: str) -> str:
    return "%s.%s" % (domain, MANIFEST)


def snapshot_of_domain(snapshot: dict[str, Any], domain: str) -> bool:
    """True if a snapshot holds a disk or the manifest of this domain (exact names, no prefixes)."""
    paths = snapshot.get("paths") or []
    names = {"/" + manifest_filename(domain)}
    disk = tag_value(snapshot, "disk")
    if disk:
        names.add("/" + disk_filename(domain, disk))
    return len(paths) == 1 and paths[0] in names


def run_tags(run_id: str, kind: str, extra: Iterable[str] = (), domain: str | None = None) -> list[str]:
    """The tags of a run's snapshot; ``domain=<name>`` unless the name holds a comma (restic splits tags there)."""
    tags = [TAG, "run=" + run_id, "kind=" + kind]
    if domain and "," not in domain:
        tags.append("domain=" + domain)
    return tags + list(extra)


def tag_value(snapshot: dict[str, Any], key: str) -> str | None:
    for tag in snapshot.get("tags") or ():
        if tag.startswith(key + "="):
            return tag[len(key) + 1:]
    return None


def check_tag(tag: str) -> str | None:
    """A problem with a user tag (restic splits --tag values at commas), or None."""
    if not tag or "," in tag or "=" in tag and tag.split("=", 1)[0] in RESERVED_TAG_KEYS:
        return "tag %r is not usable: it must be non-empty, without commas, and not start with run=, kind=, domain= or disk=" % tag
    return None


def run_time(run_id: str) -> datetime.datetime | None:
    """When a run started, from its id."""
    if not RUN_PATTERN.match(run_id or ""):
        return None
    return datetime.datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)


def runs_to_forget(manifest_plan: list[dict[str, Any]], snapshots: list[dict[str, Any]], current_run: str | None,
                   now: datetime.datetime | None = None, grace: datetime.timedelta = datetime.timedelta(days=1)) -> list[str]:
    """Snapshot ids to forget for one domain, given restic's dry-run plan for its manifests.

    A run is kept when restic's policy keeps its manifest; every snapshot of a run whose
    manifest is not kept goes. Disk snapshots of runs that never wrote a manifest go too
    once they are older than ``grace`` (a younger one may belong to a run still going on
    elsewhere). The run in progress is never touched.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    kept_runs = set()
    for group in manifest_plan or ():
        for snapshot in group.get("keep") or ():
            run = tag_value(snapshot, "run")
            if run:
                kept_runs.add(run)
    with_manifest = {tag_value(snap, "run") for snap in snapshots if tag_value(snap, "kind") == "manifest"}
    forget = []
    for snapshot in snapshots:
        run = tag_value(snapshot, "run")
        if run is None or run == current_run or run in kept_runs:
            continue
        if run not in with_manifest:
            started = run_time(run)
            if started is None or now - started < grace:
                continue
        forget.append(snapshot["id"])
    return sorted(forget)


def kept_run_ids(manifest_plan: list[dict[str, Any]]) -> set[str]:
    return {tag_value(snap, "run") for group in manifest_plan or () for snap in group.get("keep") or ()} - {None}


def pick_manifest(manifests: list[dict[str, Any]], wanted: str | None) -> dict[str, Any] | None:
    """The manifest snapshot to restore: the newest, or the one whose run id or snapshot id matches."""
    ordered = sorted(manifests, key=lambda snap: snap.get("time", ""), reverse=True)
    if not wanted or wanted == "latest":
        return ordered[0] if ordered else None
    for snapshot in ordered:
        if wanted in (tag_value(snapshot, "run"), snapshot.get("id"), snapshot.get("short_id")):
            return snapshot
    matches = [snap for snap in ordered if snap.get("id", "").startswith(wanted)]
    return matches[0] if len(wanted) >= 8 and len(matches) == 1 else None


def restore_xml(xml: str, name: str, volumes: dict[str, tuple[str, str]], keep_uuid: bool, keep_macs: bool) -> str:
    """The backed-up domain XML made ready to define: new name, disks on the restored volumes.

    ``volumes`` maps target -> (path, format). Backing chains of restored disks are dropped
    (the restored image is flat). A new identity (no uuid, no MAC addresses) lets libvirt
    generate fresh ones, so a renamed copy can run beside the original.
    """
    root = ElementTree.fromstring(xml)
    name_element = root.find("name")
    if name_element is None:
        name_element = ElementTree.SubElement(root, "name")
    name_element.text = name
    if not keep_uuid:
        for element in root.findall("uuid"):
            root.remove(element)
    if not keep_uuid:
        # The firmware variables file belongs to the original; libvirt makes a fresh one.
        for nvram in root.findall("./os/nvram"):
            root.find("os").remove(nvram)
    if not keep_macs:
        for interface in root.findall("./devices/interface"):
            for mac in interface.findall("mac"):
                interface.remove(mac)
    for disk in root.findall("./devices/disk"):
        target = disk.find("target")
        if target is None or target.get("dev") not in volumes:
            continue
        path, image_format = volumes[target.get("dev")]
        disk.set("type", "file")
        for element in disk.findall("source") + disk.findall("backingStore"):
            disk.remove(element)
        driver = disk.find("driver")
        if driver is None:
            driver = ElementTree.Element("driver", name="qemu")
            disk.insert(0, driver)
        driver.set("type", image_format)
        source = ElementTree.Element("source", file=path)
        disk.insert(list(disk).index(driver) + 1, source)
    return ElementTree.tostring(root, encoding="unicode")


def disk_sources(xml: str) -> dict[str, str | None]:
    """target -> current source path, for comparing a domain before and after."""
    return {disk.target: disk.source for disk in parse_disks(xml)}
