# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live backups of libvirt domains into restic, and what undoes an interrupted one.

A backup of a running domain goes through these phases:

1. *recover*: overlays an earlier, interrupted run left behind are committed back.
2. *snapshot*: an external disk-only snapshot (no libvirt metadata) puts a temporary qcow2
   overlay on top of each disk, quiescing the guest's file systems through its agent; the
   original images stop changing.
3. *backup <disk>*: each original image is streamed, flattened to raw by qemu-nbd and
   nbdcopy, through this process (which hashes it) into ``restic backup --stdin``.
4. *manifest*: the inactive domain XML and the disk list with sizes and SHA-256 sums go
   into a last snapshot; a run without a manifest is incomplete and never restored.
5. *commit*: each overlay is committed back (active, shallow) and pivoted away, then deleted.

Phase 5 runs whatever happened before; if the repository part failed, that run's snapshots
are forgotten again. A shut-off domain skips phases 2 and 5.

Private to this collection.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import stat
import subprocess
import tempfile
import time
from typing import Any, Iterator

from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError
from ansible_collections.hepinfra.cloud.plugins.module_utils._libvirt_disks import (
    MANIFEST_FORMAT, OVERLAY_MARK, Disk, agent_connected, disk_filename, disk_sources, is_backup_overlay,
    kept_run_ids, manifest_filename, overlay_path, parse_disks, run_tags, select_disks, snapshot_of_domain, snapshot_xml, TAG, runs_to_forget,
)
from ansible_collections.hepinfra.cloud.plugins.module_utils._restic import Restic, ResticError

# A commit whose progress stands still this long is cancelled (the domain stays on its overlay).
COMMIT_STALL_TIMEOUT = 300


def find_tools(get_bin_path: Any, restic_path: str) -> dict[str, str]:
    """The binaries the backup and restore modules run, or an error naming the package to install."""
    found = {}
    for name in ("nbdcopy", "qemu-nbd", "qemu-img"):
        path = get_bin_path(name)
        if not path:
            raise HepinfraError("%s is not installed on this host" % name,
                                hint="install qemu-utils and libnbd-bin (Debian) or qemu-img and libnbd (EL)")
        found[name] = path
    path = restic_path if "/" in restic_path else get_bin_path(restic_path)
    if not path:
        raise HepinfraError("restic is not installed on this host", hint="install restic 0.17 or later, or set restic_path")
    found["restic"] = path
    return found


class PhaseError(HepinfraError):
    """A backup phase failed."""


class ImageReader:
    """A disk image flattened to a raw byte stream (qemu-nbd serving it, nbdcopy reading it)."""

    def __init__(self, tools: dict[str, str], path: str, image_format: str | None) -> None:
        self.path = path
        self.errors = tempfile.TemporaryFile()  # pylint: disable=consider-using-with
        argv = [tools["nbdcopy"], "--", "[", tools["qemu-nbd"], "--read-only"]
        if image_format:
            argv += ["--format", image_format]
        argv += [path, "]", "-"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.errors)  # pylint: disable=consider-using-with

    def read(self, size: int) -> bytes:
        return self.proc.stdout.read(size)

    def finish(self) -> None:
        """Wait for the reader; raise if it failed (then the stream must not be used)."""
        returncode = self.proc.wait()
        if returncode != 0:
            self.errors.seek(0)
            message = self.errors.read().decode(errors="replace").strip().splitlines()
            raise HepinfraError("reading %s failed (%s)" % (self.path, message[-1] if message else "exit %d" % returncode))

    def close(self) -> None:
        # SIGTERM, not SIGKILL: nbdcopy then stops the qemu-nbd it started, whose lock on the
        # image would otherwise block the commit that follows.
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.errors.close()


@contextlib.contextmanager
def domain_lock(uuid: str, name: str) -> Iterator[None]:
    """One backup per domain at a time on this host."""
    # A directory only root can write: nobody else can hold the lock and block backups.
    directory = "/run/hepinfra" if os.path.isdir("/run") and os.access("/run", os.W_OK) else os.path.join(tempfile.gettempdir(), "hepinfra")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, "libvirt-backup-%s.lock" % uuid)
    with open(path, "a", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise PhaseError("another backup of this domain is running", target="domain %s" % name,
                             hint="wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class DomainBackup:
    """Back up one domain. ``libvirt`` is the imported libvirt module."""

    def __init__(self, libvirt: Any, conn: Any, name: str, restic: Restic, tools: dict[str, str], options: dict[str, Any]) -> None:
        self.libvirt = libvirt
        self.conn = conn
        self.name = name
        self.restic = restic
        self.tools = tools
        self.options = options
        self.run_id: str = options["run_id"]
        self.dom = conn.lookupByName(name)
        self.result: dict[str, Any] = {"name": name, "run": self.run_id, "disks": [], "recovered": []}
        self.overlays: dict[str, tuple[Disk, str]] = {}
        self.phase = "start"
        self.warnings: list[str] = []

    # -- plan -------------------------------------------------------------------------------

    def plan(self) -> tuple[list[Disk], bool, bool]:
        """(disks to back up, running?, quiesce?) or raise with every problem found."""
        live_xml = self.dom.XMLDesc(0)
        running = bool(self.dom.isActive())
        disks, problems = select_disks(parse_disks(live_xml), self.options.get("disks"))
        if problems:
            raise PhaseError("; ".join(problems), target="domain %s" % self.name)
        if not disks:
            raise PhaseError("the domain has no disk to back up", target="domain %s" % self.name)
        if running and not self.options.get("overlay_dir"):
            block = [disk.target for disk in disks if disk.kind == "block" and not disk.readonly]
            if block:
                raise PhaseError("disk %s is a block device: its temporary overlay needs a directory" % ", ".join(block),
                                 target="domain %s" % self.name, hint="set overlay_dir", phase="plan")
        quiesce = False
        mode = self.options["quiesce"]
        if running and mode != "never":
            connected = agent_connected(live_xml)
            if connected:
                quiesce = True
            elif mode == "required":
                raise PhaseError("quiesce: the guest agent is not connected", target="domain %s" % self.name,
                                 hint="start qemu-guest-agent in the guest, or set quiesce: auto", phase="quiesce")
        return disks, running, quiesce

    def describe(self) -> dict[str, Any]:
        disks, running, quiesce = self.plan()
        return dict(self.result, state="would back up", running=running, quiesce=quiesce,
                    disks=[{"target": d.target, "source": d.source, "format": d.driver_format} for d in disks])

    # -- run --------------------------------------------------------------------------------

    def run(self, retention_policy: dict[str, int] | None = None, host: str | None = None) -> dict[str, Any]:
        started = time.monotonic()
        uuid = self.dom.UUIDString()
        with domain_lock(uuid, self.name):
            try:
                self.phase = "recover"
                self.recover()
                self.phase = "plan"
                disks, running, quiesce = self.plan()
                before = disk_sources(self.dom.XMLDesc(0))
            except BaseException as exc:  # pylint: disable=broad-exception-caught
                raise self.phase_error(exc) from None
            error: BaseException | None = None
            try:
                if running:
                    self.phase = "snapshot"
                    self.snapshot(disks, quiesce)
                self.result["quiesced"] = quiesce
                self.result["running"] = running
                entries = []
                for disk in disks:
                    self.phase = "backup " + disk.target
                    entries.append(self.backup_disk(disk))
                self.phase = "manifest"
                self.write_manifest(entries, running)
            except BaseException as exc:  # pylint: disable=broad-exception-caught
                error = exc
            failed_phase = self.phase
            commit_error = self.commit_all()
            self.resume_if_paused(running)
            if error is not None:
                self.forget_partial()
                self.phase = failed_phase
                failure = self.phase_error(error)
                if commit_error is not None:
                    # The worst case: the domain still runs on an overlay. Say so first.
                    raise PhaseError("%s; and then %s" % (commit_error.message, failure.message), target=commit_error.target,
                                     hint=commit_error.hint, phase="commit") from None
                raise failure
            if commit_error is not None:
                raise commit_error
            after = disk_sources(self.dom.XMLDesc(0))
            if after != before:
                raise PhaseError("commit: the disk sources changed during the backup (%s -> %s)" % (before, after),
                                 target="domain %s" % self.name, phase="commit")
            if retention_policy:
                self.phase = "retention"
                try:
                    self.result["forgotten"] = retention(self.restic, self.name, host, retention_policy, self.run_id)
                except HepinfraError as exc:
                    raise self.phase_error(exc) from None
            self.result["state"] = "backed up"
            self.result["duration"] = round(time.monotonic() - started, 3)
            return self.result

    def resume_if_paused(self, was_running: bool) -> None:
        """A guest paused by a full overlay file system (QEMU's werror=enospc) runs again once committed."""
        if not was_running:
            return
        try:
            state, reason = self.dom.state()
            if state == self.libvirt.VIR_DOMAIN_PAUSED and reason == self.libvirt.VIR_DOMAIN_PAUSED_IOERROR:
                self.dom.resume()
                self.warnings.append("domain %s was paused by an I/O error during the backup (overlay file system full?)"
                                     " and was resumed" % self.name)
        except self.libvirt.libvirtError:
            pass

    def phase_error(self, exc: BaseException) -> PhaseError:
        if isinstance(exc, PhaseError):
            return exc
        if isinstance(exc, ResticError):
            message = exc.message if exc.message.startswith(self.phase) else "%s: %s" % (self.phase, exc.message)
            return PhaseError(message + " (on %s)" % exc.target, target="domain %s" % self.name, hint=exc.hint, phase=self.phase)
        if isinstance(exc, HepinfraError):
            return PhaseError("%s: %s" % (self.phase, exc.message), target="domain %s" % self.name, hint=exc.hint, phase=self.phase)
        if isinstance(exc, self.libvirt.libvirtError):
            return PhaseError("%s: %s" % (self.phase, exc.get_error_message()), target="domain %s" % self.name, phase=self.phase)
        if isinstance(exc, Exception):
            return PhaseError("%s: %s: %s" % (self.phase, type(exc).__name__, exc), target="domain %s" % self.name, phase=self.phase)
        raise exc

    def snapshot(self, disks: list[Disk], quiesce: bool) -> None:
        overlays = {}
        for disk in disks:
            if disk.readonly:
                continue  # read-only images do not change: read them where they are
            path = overlay_path(disk, self.run_id, self.options.get("overlay_dir"))
            if os.path.exists(path):
                raise PhaseError("snapshot: %s already exists" % path, target="domain %s" % self.name, phase="snapshot")
            overlays[disk.target] = path
        if not overlays:
            return
        lv = self.libvirt
        flags = lv.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | lv.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC | lv.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
        if quiesce:
            flags |= lv.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
        xml = snapshot_xml("hepinfra-backup-" + self.run_id, parse_disks(self.dom.XMLDesc(0)), overlays)
        try:
            self.dom.snapshotCreateXML(xml, flags)
        except lv.libvirtError:
            # ATOMIC: libvirt has undone everything, but a created overlay file may remain.
            for path in overlays.values():
                if os.path.exists(path) and path not in disk_sources(self.dom.XMLDesc(0)).values():
                    os.unlink(path)
            raise
        by_target = {disk.target: disk for disk in disks}
        self.overlays = {target: (by_target[target], path) for target, path in overlays.items()}

    def backup_disk(self, disk: Disk) -> dict[str, Any]:
        started = time.monotonic()
        digest = hashlib.sha256()
        counted = [0]

        def on_chunk(chunk: bytes) -> None:
            digest.update(chunk)
            counted[0] += len(chunk)

        reader = ImageReader(self.tools, disk.source, disk.driver_format)
        try:
            summary = self.restic.backup_stream(
                _Checked(reader), disk_filename(self.name, disk.target),
                run_tags(self.run_id, "disk", ["disk=" + disk.target, *self.options["tags"]], domain=self.name),
                phase="backup " + disk.target, on_chunk=on_chunk,
            )
        finally:
            reader.close()
        entry = {
            "target": disk.target,
            "source": disk.source,
            "format": disk.driver_format,
            "readonly": disk.readonly,
            "size": counted[0],
            "sha256": digest.hexdigest(),
            "snapshot_id": summary.get("snapshot_id"),
            "bytes_read": counted[0],
            "bytes_added": summary.get("data_added", 0),
            "duration": round(time.monotonic() - started, 3),
        }
        self.result["disks"].append(entry)
        return entry

    def write_manifest(self, entries: list[dict[str, Any]], running: bool) -> None:
        lv = self.libvirt
        manifest = {
            "format": MANIFEST_FORMAT,
            "domain": self.name,
            "uuid": self.dom.UUIDString(),
            "run": self.run_id,
            "hypervisor": socket.getfqdn(),
            "running": running,
            "quiesced": self.result.get("quiesced", False),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "xml": self.dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE | lv.VIR_DOMAIN_XML_SECURE),
            "disks": [{key: entry[key] for key in ("target", "source", "format", "readonly", "size", "sha256", "snapshot_id")}
                      for entry in entries],
        }
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        summary = self.restic.backup_stream(
            _Bytes(data), manifest_filename(self.name), run_tags(self.run_id, "manifest", self.options["tags"], domain=self.name),
            phase="manifest",
        )
        self.result["manifest_snapshot"] = summary.get("snapshot_id")

    # -- undo -------------------------------------------------------------------------------

    def commit_all(self) -> PhaseError | None:
        """Commit every overlay of this run back; None when the domain is back on its images."""
        failures = []
        for target, (disk, path) in sorted(self.overlays.items()):
            try:
                self.commit(target, disk.source, path, disk.driver_format)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                failures.append("%s: %s" % (target, exc.get_error_message() if isinstance(exc, self.libvirt.libvirtError) else exc))
        self.overlays = {}
        if failures:
            return PhaseError(
                "commit: the domain still runs on temporary overlays (%s)" % "; ".join(failures),
                target="domain %s" % self.name,
                hint="the overlays were kept: the next backup run commits them back, or commit them with"
                     " 'virsh blockcommit --active --shallow --pivot'", phase="commit",
            )
        return None

    def commit(self, target: str, original: str, overlay: str, original_format: str | None) -> None:
        """Commit an overlay back into the image below it and pivot the domain onto that image."""
        lv = self.libvirt
        job = self.dom.blockJobInfo(target, 0)
        if not job:
            # An active commit left by a killed run is reused; anything else is started fresh.
            self.dom.blockCommit(target, None, None, 0, lv.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | lv.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW)
        elif job.get("type") != lv.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT:
            raise HepinfraError("disk %s has another block job running (type %s)" % (target, job.get("type")))
        last = (-1, time.monotonic())
        while True:
            job = self.dom.blockJobInfo(target, 0)
            if job and job["end"] > 0 and job["cur"] == job["end"]:
                try:
                    self.dom.blockJobAbort(target, lv.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                    break
                except lv.libvirtError as exc:
                    if exc.get_error_code() != lv.VIR_ERR_BLOCK_COPY_ACTIVE:
                        raise
            elif not job:
                raise HepinfraError("the commit job of disk %s ended without a pivot" % target)
            if job and job["cur"] != last[0]:
                last = (job["cur"], time.monotonic())
            elif time.monotonic() - last[1] > COMMIT_STALL_TIMEOUT:
                # Give up cleanly: the domain stays on the overlay, and the next run commits it.
                try:
                    self.dom.blockJobAbort(target, 0)
                except lv.libvirtError:
                    pass
                raise HepinfraError("the commit of disk %s made no progress for %d s" % (target, COMMIT_STALL_TIMEOUT))
            time.sleep(0.2)
        source = disk_sources(self.dom.XMLDesc(0)).get(target)
        if source != original:
            raise HepinfraError("after the pivot disk %s runs on %s, not on %s" % (target, source, original))
        self.sync_persistent(target, original, original_format)
        os.unlink(overlay)

    def sync_persistent(self, target: str, original: str, original_format: str | None) -> None:
        """Point the persistent definition back at the original image if it still names an overlay."""
        lv = self.libvirt
        if not self.dom.isPersistent():
            return
        xml = self.dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE | lv.VIR_DOMAIN_XML_SECURE)
        if is_backup_overlay(disk_sources(xml).get(target)):
            self.conn.defineXML(_set_source(xml, target, original, original_format))

    def recover(self) -> None:
        """Undo what an interrupted run (killed module, lost controller) left behind.

        A domain still on an overlay gets it committed back; a persistent definition that still
        names an overlay is pointed back at the image below it; overlay files nothing uses any
        more are deleted.
        """
        lv = self.libvirt
        running = bool(self.dom.isActive())
        for disk in parse_disks(self.dom.XMLDesc(0)):
            if not is_backup_overlay(disk.source):
                continue
            original, original_format = _backing_of(self.tools, disk.source)
            if running:
                self.commit(disk.target, disk.backing or original, disk.source, original_format)
            else:
                subprocess.run([self.tools["qemu-img"], "commit", "-q", disk.source], check=True, capture_output=True)
                xml = self.dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE | lv.VIR_DOMAIN_XML_SECURE)
                self.conn.defineXML(_set_source(xml, disk.target, original, original_format))
                os.unlink(disk.source)
            self.result["recovered"].append({"target": disk.target, "overlay": disk.source, "image": disk.backing or original})
        if self.dom.isPersistent():
            # The pivot happened but the persistent definition was not updated (killed in between):
            # the overlay holds nothing the image lacks, so the definition goes back to the image.
            inactive = self.dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE | lv.VIR_DOMAIN_XML_SECURE)
            live = disk_sources(self.dom.XMLDesc(0))
            for disk in parse_disks(inactive):
                if is_backup_overlay(disk.source) and not is_backup_overlay(live.get(disk.target)) and running:
                    self.conn.defineXML(_set_source(inactive, disk.target, live[disk.target], None))
                    inactive = self.dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE | lv.VIR_DOMAIN_XML_SECURE)
        in_use = set(disk_sources(self.dom.XMLDesc(0)).values())
        if self.dom.isPersistent():
            in_use |= set(disk_sources(self.dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE)).values())
        directories = {os.path.dirname(disk.source) for disk in parse_disks(self.dom.XMLDesc(0)) if disk.source}
        if self.options.get("overlay_dir"):
            directories.add(self.options["overlay_dir"])
        for directory in sorted(directories):
            for path in _stale_overlays(directory, self.dom.XMLDesc(0)):
                if path not in in_use:
                    os.unlink(path)
                    self.result["recovered"].append({"overlay": path, "removed": True})

    def forget_partial(self) -> None:
        """Forget the snapshots an unsuccessful run wrote; warn (retention catches them) if that fails."""
        try:
            self.restic.run(["unlock"], "unlock", timeout=self.restic.timeout)  # stale locks of a killed restic
            snapshots = self.restic.snapshots(tags=[TAG + ",run=" + self.run_id])
            self.restic.forget([snap["id"] for snap in snapshots])
        except HepinfraError as exc:
            self.warnings.append("domain %s: the snapshots of the failed run %s could not be forgotten (%s); retention"
                                 " forgets them later" % (self.name, self.run_id, exc.message))


class _Checked:
    """Reads from an ImageReader and raises at EOF if the reader failed."""

    def __init__(self, reader: ImageReader) -> None:
        self.reader = reader

    def read(self, size: int) -> bytes:
        chunk = self.reader.read(size)
        if not chunk:
            self.reader.finish()
        return chunk


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def read(self, size: int) -> bytes:
        chunk = self.data[self.offset:self.offset + size]
        self.offset += len(chunk)
        return chunk


def _image_info(tools: dict[str, str], path: str) -> dict[str, Any]:
    out = subprocess.run([tools["qemu-img"], "info", "--force-share", "--output=json", path],
                         check=True, capture_output=True).stdout
    return json.loads(out)


def _backing_of(tools: dict[str, str], overlay: str) -> tuple[str, str | None]:
    """The image below an overlay and its format, as recorded in the overlay (never probed)."""
    info = _image_info(tools, overlay)
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if not backing:
        raise HepinfraError("overlay %s has no backing file" % overlay)
    return backing, info.get("backing-filename-format")


def _stale_overlays(directory: str, xml: str) -> list[str]:
    """Overlay files of this module for the domain's images in a directory."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    bases = {os.path.basename(disk.source) for disk in parse_disks(xml) if disk.source}
    bases |= {os.path.basename(disk.backing) for disk in parse_disks(xml) if disk.backing}
    found = []
    for name in names:
        path = os.path.join(directory, name)
        if is_backup_overlay(path) and name[:name.rindex(OVERLAY_MARK)] in bases:
            found.append(path)
    return sorted(found)


def _set_source(xml: str, target: str, path: str, image_format: str | None) -> str:
    # pylint: disable-next=import-outside-toplevel
    from xml.etree import ElementTree

    root = ElementTree.fromstring(xml)
    for disk in root.findall("./devices/disk"):
        element = disk.find("target")
        if element is None or element.get("dev") != target:
            continue
        for backing in disk.findall("backingStore"):
            disk.remove(backing)
        source = disk.find("source")
        if source is None:
            source = ElementTree.SubElement(disk, "source")
        block = os.path.exists(path) and stat.S_ISBLK(os.stat(path).st_mode)
        source.attrib.pop("file", None)
        source.attrib.pop("dev", None)
        disk.set("type", "block" if block else "file")
        source.set("dev" if block else "file", path)
        driver = disk.find("driver")
        if image_format and driver is not None:
            driver.set("type", image_format)
    return ElementTree.tostring(root, encoding="unicode")


def retention(restic: Restic, domain: str, host: str | None, policy: dict[str, int], current_run: str | None) -> list[str]:
    """Apply the keep policy to a domain's runs; return the snapshot ids forgotten."""
    plan = restic.forget_plan(policy, [TAG + ",kind=manifest"], host, "/" + manifest_filename(domain))
    snapshots = [snap for snap in restic.snapshots(tags=[TAG], host=host) if snapshot_of_domain(snap, domain)]
    if current_run and current_run not in kept_run_ids(plan):
        # Never act on a plan that would drop the run just made: something is off with it.
        raise HepinfraError("retention: restic's plan does not keep run %s; nothing was forgotten" % current_run)
    forget = runs_to_forget(plan, snapshots, current_run)
    restic.forget(forget)
    return forget
