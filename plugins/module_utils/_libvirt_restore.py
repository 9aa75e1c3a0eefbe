# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore a domain (or some of its disks) from a libvirt_backup run.

Volumes are created in a libvirt storage pool and written through qemu-nbd (so a qcow2
volume is filled directly from the raw stream, zeros left unallocated); every byte is hashed
on the way and compared with the manifest, and with ``verify`` the written volume is read
back and hashed again. Whatever fails, the volumes this run created are deleted again and
nothing is defined.

Private to this collection.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import time
from typing import Any
from xml.etree import ElementTree

from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError
from ansible_collections.hepinfra.cloud.plugins.module_utils._libvirt_backup import ImageReader
from ansible_collections.hepinfra.cloud.plugins.module_utils._libvirt_disks import (
    MANIFEST_FORMAT, TAG, disk_filename, domain_uuid, manifest_filename, parse_disks, pick_manifest, restore_xml, tag_value,
)
from ansible_collections.hepinfra.cloud.plugins.module_utils._restic import Restic


class RestoreError(HepinfraError):
    """A restore step failed or was refused."""


def find_manifest(restic: Restic, domain: str, wanted: str | None, host: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest snapshot, manifest) of the chosen run of a domain."""
    snapshots = restic.snapshots(tags=[TAG + ",kind=manifest"], path="/" + manifest_filename(domain), host=host)
    chosen = pick_manifest(snapshots, wanted)
    if chosen is None:
        if not snapshots:
            raise RestoreError("there is no complete backup of domain %s%s" % (domain, " from host %s" % host if host else ""),
                               target=restic.where, hint="check the domain name and snapshot_host")
        runs = ", ".join(tag_value(snap, "run") or snap["short_id"] for snap in snapshots[-5:])
        raise RestoreError("domain %s has no backup run or snapshot %r (latest runs: %s)" % (domain, wanted, runs),
                           target=restic.where)
    try:
        manifest = json.loads(restic.read_file(chosen["id"], manifest_filename(domain), "read manifest"))
    except ValueError:
        raise RestoreError("the manifest of run %s is not JSON" % tag_value(chosen, "run"), target=restic.where) from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise RestoreError("the manifest of run %s has format %r; this collection reads format %d"
                           % (tag_value(chosen, "run"), manifest.get("format"), MANIFEST_FORMAT), target=restic.where)
    return chosen, manifest


def volume_xml(name: str, capacity: int, image_format: str) -> str:
    root = ElementTree.Element("volume")
    ElementTree.SubElement(root, "name").text = name
    ElementTree.SubElement(root, "capacity", unit="bytes").text = str(capacity)
    ElementTree.SubElement(root, "allocation", unit="bytes").text = "0"
    target = ElementTree.SubElement(root, "target")
    ElementTree.SubElement(target, "format", type=image_format)
    if image_format == "qcow2":
        # qcow2 v3: zero clusters, so the zeros of the stream stay unallocated.
        ElementTree.SubElement(target, "compat").text = "1.1"
    permissions = ElementTree.SubElement(target, "permissions")
    ElementTree.SubElement(permissions, "mode").text = "0600"
    return ElementTree.tostring(root, encoding="unicode")


class ImageWriter:
    """Writes a raw byte stream into an image through qemu-nbd (nbdcopy on the other side)."""

    def __init__(self, tools: dict[str, str], path: str, image_format: str) -> None:
        self.path = path
        self.errors = tempfile.TemporaryFile()  # pylint: disable=consider-using-with
        argv = [tools["nbdcopy"], "--", "-", "[", tools["qemu-nbd"], "--format", image_format, "--discard=unmap", "--detect-zeroes=unmap",
                path, "]"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,  # pylint: disable=consider-using-with
                                     stderr=self.errors)

    def write(self, chunk: bytes) -> None:
        try:
            self.proc.stdin.write(chunk)
        except BrokenPipeError:
            self.finish()
            raise HepinfraError("writing %s failed: the writer ended early" % self.path) from None

    def finish(self) -> None:
        if not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        returncode = self.proc.wait()
        if returncode != 0:
            self.errors.seek(0)
            lines = self.errors.read().decode(errors="replace").strip().splitlines()
            raise HepinfraError("writing %s failed (%s)" % (self.path, lines[-1] if lines else "exit %d" % returncode))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.errors.close()


class DomainRestore:
    """Restore one run of one domain into a storage pool."""

    def __init__(self, libvirt: Any, conn: Any, restic: Restic, tools: dict[str, str], options: dict[str, Any]) -> None:
        self.libvirt = libvirt
        self.conn = conn
        self.restic = restic
        self.tools = tools
        self.options = options
        self.created: list[Any] = []
        self.dom: Any = None
        self.replaced_xml: str | None = None
        self.phase = "plan"

    def plan(self) -> dict[str, Any]:
        """Everything the restore would do, or raise with the reason it is refused."""
        opts = self.options
        snapshot, manifest = find_manifest(self.restic, opts["domain"], opts["snapshot"], opts["snapshot_host"])
        name = opts["name"] or manifest["domain"]
        disks = manifest["disks"]
        if opts["disks"]:
            known = [disk["target"] for disk in disks]
            unknown = [target for target in opts["disks"] if target not in known]
            if unknown:
                raise RestoreError("run %s of %s has no disk %s (disks: %s)" % (manifest["run"], manifest["domain"],
                                   ", ".join(unknown), ", ".join(known)))
            disks = [disk for disk in disks if disk["target"] in opts["disks"]]
            if opts["define"] and len(disks) != len(manifest["disks"]):
                raise RestoreError("a domain can only be defined with all its disks restored",
                                   hint="set define: false to restore single disks")
        if opts["define"]:
            backed_up = {disk["target"] for disk in manifest["disks"]}
            others = [disk.target for disk in parse_disks(manifest["xml"])
                      if disk.device in ("disk", "lun") and disk.source and disk.target not in backed_up]
            if others:
                # Defining it would attach the original's disks to the copy.
                raise RestoreError("run %s holds only some disks of %s (not %s): the domain cannot be defined from it"
                                   % (manifest["run"], manifest["domain"], ", ".join(others)),
                                   hint="set define: false to restore the disks it holds")
        pool = self.pool()
        extension = "qcow2" if opts["format"] == "qcow2" else "img"
        users = self.volume_users()
        volumes = []
        for disk in disks:
            volume_name = "%s-%s.%s" % (name, disk["target"], extension)
            existing = self.volume(pool, volume_name)
            if existing is not None and not opts["force"]:
                raise RestoreError("volume %s already exists in pool %s" % (volume_name, opts["pool"]),
                                   hint="remove it, choose another name, or set force: true to overwrite it")
            if existing is not None:
                running = [dom for dom, active in users.get(existing.path(), []) if active]
                if running:
                    raise RestoreError("volume %s is in use by running domain %s: a restore never overwrites it"
                                       % (volume_name, ", ".join(running)), hint="shut it down first, or restore under another name")
            volumes.append({"target": disk["target"], "volume": volume_name, "exists": existing is not None,
                            "size": disk["size"], "sha256": disk["sha256"], "snapshot_id": disk["snapshot_id"]})
        existing_domain = None
        if opts["define"]:
            existing_domain = self.domain(name)
            if existing_domain is not None:
                if existing_domain.isActive():
                    raise RestoreError("domain %s is running: a restore never replaces a running domain" % name,
                                       hint="shut it down first, or restore under another name")
                if not opts["force"]:
                    raise RestoreError("domain %s is already defined" % name,
                                       hint="undefine it, restore under another name, or set force: true to replace its definition")
        original_uuid = domain_uuid(manifest["xml"])
        same_identity = name == manifest["domain"] and (existing_domain is not None or self.domain_by_uuid(original_uuid) is None)
        return {
            "manifest": manifest, "snapshot": snapshot, "name": name, "pool": opts["pool"], "volumes": volumes,
            "run": manifest["run"], "replaces_domain": existing_domain is not None, "keep_identity": same_identity,
        }

    def volume_users(self) -> dict[str, list[tuple[str, bool]]]:
        """image path -> [(domain name, running?)] over every domain of the hypervisor."""
        users: dict[str, list[tuple[str, bool]]] = {}
        for dom in self.conn.listAllDomains():
            for disk in parse_disks(dom.XMLDesc(0)):
                if disk.source:
                    users.setdefault(disk.source, []).append((dom.name(), bool(dom.isActive())))
        return users

    def pool(self) -> Any:
        lv = self.libvirt
        try:
            pool = self.conn.storagePoolLookupByName(self.options["pool"])
        except lv.libvirtError:
            raise RestoreError("there is no storage pool %s" % self.options["pool"]) from None
        if not pool.isActive():
            raise RestoreError("storage pool %s is not active" % self.options["pool"], hint="start it with virsh pool-start")
        pool.refresh(0)
        return pool

    def volume(self, pool: Any, name: str) -> Any:
        try:
            return pool.storageVolLookupByName(name)
        except self.libvirt.libvirtError:
            return None

    def domain(self, name: str) -> Any:
        try:
            return self.conn.lookupByName(name)
        except self.libvirt.libvirtError:
            return None

    def domain_by_uuid(self, uuid: str | None) -> Any:
        if not uuid:
            return None
        try:
            return self.conn.lookupByUUIDString(uuid)
        except self.libvirt.libvirtError:
            return None

    def run(self, plan: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        try:
            return self._run(plan, started)
        except BaseException:
            self.undo_define()
            self.remove_created()
            raise

    def _run(self, plan: dict[str, Any], started: float) -> dict[str, Any]:
        opts = self.options
        pool = self.pool()
        image_format = opts["format"]
        written: dict[str, tuple[str, str]] = {}
        disks = []
        for entry in plan["volumes"]:
            self.phase = "restore " + entry["target"]
            if entry["exists"]:
                self.volume(pool, entry["volume"]).delete(0)
            volume = pool.createXML(volume_xml(entry["volume"], entry["size"], image_format), 0)
            self.created.append(volume)
            path = volume.path()
            disk_started = time.monotonic()
            digest, size = self.write(entry, path, image_format)
            if size != entry["size"] or digest != entry["sha256"]:
                raise RestoreError("disk %s: the restored data does not match the backup (%d bytes, sha256 %s; the manifest says"
                                   " %d bytes, sha256 %s)" % (entry["target"], size, digest, entry["size"], entry["sha256"]))
            verified = False
            if opts["verify"]:
                self.phase = "verify " + entry["target"]
                check = self.read_back(path, image_format)
                if check != entry["sha256"]:
                    raise RestoreError("disk %s: reading back %s gives sha256 %s, the backup has %s"
                                       % (entry["target"], path, check, entry["sha256"]))
                verified = True
            written[entry["target"]] = (path, image_format)
            disks.append({"target": entry["target"], "volume": entry["volume"], "path": path, "size": size,
                          "sha256": digest, "verified": verified, "duration": round(time.monotonic() - disk_started, 3)})
        defined = False
        if opts["define"]:
            self.phase = "define"
            xml = restore_xml(plan["manifest"]["xml"], plan["name"], written, keep_uuid=plan["keep_identity"],
                              keep_macs=plan["keep_identity"])
            self.define(xml, plan["name"])
            defined = True
            if opts["start"]:
                self.phase = "start"
                self.dom.create()
        self.created = []
        self.dom = None
        self.replaced_xml = None
        return {"name": plan["name"], "run": plan["run"], "disks": disks, "defined": defined,
                "started": bool(opts["start"] and defined), "duration": round(time.monotonic() - started, 3)}

    def define(self, xml: str, name: str) -> None:
        """Define the domain; a replaced definition is kept until the new one is in place."""
        lv = self.libvirt
        existing = self.domain(name)
        if existing is not None:
            if existing.isActive():
                raise RestoreError("domain %s started during the restore" % name)
            self.replaced_xml = existing.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE | lv.VIR_DOMAIN_XML_SECURE)
            if domain_uuid(xml) != existing.UUIDString():
                # Another identity under the same name: libvirt needs the old definition gone first.
                existing.undefineFlags(getattr(lv, "VIR_DOMAIN_UNDEFINE_KEEP_NVRAM", 0))
        self.dom = self.conn.defineXML(xml)

    def undo_define(self) -> None:
        """Remove the definition this run made and put back the one it replaced."""
        lv = self.libvirt
        if self.dom is not None:
            try:
                if self.dom.isActive():
                    self.dom.destroy()
                self.dom.undefineFlags(getattr(lv, "VIR_DOMAIN_UNDEFINE_KEEP_NVRAM", 0))
            except lv.libvirtError:
                pass
            self.dom = None
        if self.replaced_xml is not None:
            try:
                self.conn.defineXML(self.replaced_xml)
            except lv.libvirtError:
                pass
            self.replaced_xml = None

    def write(self, entry: dict[str, Any], path: str, image_format: str) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = [0]
        writer = ImageWriter(self.tools, path, image_format)
        try:
            def sink(chunk: bytes) -> None:
                digest.update(chunk)
                size[0] += len(chunk)
                writer.write(chunk)

            self.restic.dump(entry["snapshot_id"], disk_filename(self.options["domain"], entry["target"]),
                             "restore " + entry["target"], sink)
            writer.finish()
        finally:
            writer.close()
        return digest.hexdigest(), size[0]

    def read_back(self, path: str, image_format: str) -> str:
        digest = hashlib.sha256()
        reader = ImageReader(self.tools, path, image_format)
        try:
            while True:
                chunk = reader.read(4 << 20)
                if not chunk:
                    break
                digest.update(chunk)
            reader.finish()
        finally:
            reader.close()
        return digest.hexdigest()

    def remove_created(self) -> None:
        for volume in self.created:
            try:
                volume.delete(0)
            except self.libvirt.libvirtError:
                pass
        self.created = []
