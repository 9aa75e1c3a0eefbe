# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One image task over many clouds: plan on each cloud at once, read the source once, upload concurrently.

Used by the image and image_info modules. A failure on one cloud is recorded in that cloud's
result and never stops the others.

Private to this collection: the leading underscore means the API may change between releases.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.hepinfra.cloud.plugins.module_utils import _clouds, _images
from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError

MAX_PARALLEL = 16


@dataclass
class CloudRun:
    """What happens on one cloud, and what happened."""

    cloud: Any
    target: _images.Target | None = None
    versions: list[_images.Version] = field(default_factory=list)
    action: str = "none"                  # none | upload | restore | delete
    current: _images.Version | None = None
    older: _images.Version | None = None
    format: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    delete: list[_images.Version] = field(default_factory=list)
    held: list[_images.Version] = field(default_factory=list)
    subscription: _images.Subscription | None = None
    new: _images.Version | None = None
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    duration: float = 0.0
    applied: bool = False                 # a real run: what follows is what was done, not planned
    done: list[str] = field(default_factory=list)   # steps that took effect (upload, promote, metadata, ...)
    deleted: list[_images.Version] = field(default_factory=list)
    aside: list[_images.Version] = field(default_factory=list)  # older versions still under the plain name

    @property
    def changed(self) -> bool:
        if self.applied:
            return bool(self.done) or bool(self.deleted)
        return self.error is None and (self.action != "none" or bool(self.metadata) or bool(self.delete)
                                       or bool(self.aside))

    def report(self, converted_from: str | None) -> dict[str, Any]:
        current = self.new or self.current
        if self.action in ("upload", "restore") and self.new is None:
            current = None  # planned only (check mode) or failed: no new version to name
        deleted = self.deleted if self.applied else self.delete
        return {
            "cloud": self.cloud.name, "type": self.cloud.type, "changed": self.changed, "failed": self.error is not None,
            "error": self.error, "action": self.action,
            "version": current.version if current else None, "id": current.ref if current else None,
            "previous_version": self.current.version if self.current and self.current is not current else None,
            "format": self.format or (current.format if current else None),
            "converted_from": converted_from if self.action == "upload" and self.format != converted_from else None,
            "bytes_sent": self.target.bytes_sent if self.target else 0,
            "updated": sorted(self.metadata),
            "deleted": sorted(v.name for v in deleted),
            "kept_in_use": sorted(v.name for v in self.held),
            "warnings": list(self.target.warnings) if self.target else [],
            "duration": round(self.duration, 3),
        }


def describe_error(cloud: Any, exc: BaseException, action: str) -> str:
    if isinstance(exc, HepinfraError):
        return str(exc)
    libvirt_error = getattr(exc, "get_error_message", None)
    if callable(libvirt_error):
        return str(HepinfraError("%s failed: %s" % (action, libvirt_error()), target="cloud %s" % cloud.name))
    return str(_clouds.openstack_error(cloud, exc, action))


def parallel(runs: list[CloudRun], work: Any) -> None:
    def guarded(run: CloudRun) -> None:
        try:
            work(run)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            run.error = describe_error(run.cloud, exc, getattr(work, "action", "the image task"))
        finally:
            run.duration = time.monotonic() - run.started

    with ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL, len(runs)))) as pool:
        list(pool.map(guarded, runs))


def connect_all(clouds: list[Any], libraries: dict[str, Any]) -> list[CloudRun]:
    runs = [CloudRun(cloud=cloud) for cloud in clouds]

    def connect(run: CloudRun) -> None:
        library = {"openstack": "openstack", "libvirt": "libvirt"}[run.cloud.type]
        if libraries.get(library) is None:
            raise HepinfraError("the Python library %s is missing on this host" % library, target="cloud %s" % run.cloud.name,
                                hint="pip install %s" % ("openstacksdk" if library == "openstack" else "libvirt-python"))
        run.target = _images.TARGETS[run.cloud.type](run.cloud, libraries)
        run.target.connect()

    connect.action = "connecting"  # type: ignore[attr-defined]
    parallel(runs, connect)
    return runs


def close_all(runs: list[CloudRun]) -> None:
    for run in runs:
        if run.target is not None:
            try:
                run.target.close()
            except Exception:  # pylint: disable=broad-exception-caught
                pass


def plan_present(runs: list[CloudRun], source: _images.Artifact, desired: _images.Desired) -> None:
    def plan(run: CloudRun) -> None:
        run.versions = run.target.versions(desired.name)
        run.action, found = _images.plan_content(run.versions, source.sha256)
        run.current = next((v for v in run.versions if v.current and v.complete), None)
        if run.action == "restore":
            run.older = found
        formats = run.cloud.image_formats
        run.format = source.format if source.format in formats else formats[0]
        if run.action == "none" and run.current is not None:
            run.format = run.current.format
            run.metadata = run.target.metadata_changes(run.current, desired)
            if run.cloud.type == "openstack":
                run.aside = [v for v in run.versions if v.name == desired.name and v is not run.current]
        _plan_retention(run, desired, extra_new=run.action in ("upload", "restore") and run.cloud.type == "libvirt")

    plan.action = "planning"  # type: ignore[attr-defined]
    parallel([run for run in runs if run.error is None], plan)


def _plan_retention(run: CloudRun, desired: _images.Desired, extra_new: bool) -> None:
    """Retention on the versions as they will be after this run (the new one current)."""
    future = [dataclasses.replace(v, current=False) for v in run.versions]
    if run.action == "none":
        future = [dataclasses.replace(v, current=v is run.current) for v in run.versions]
    elif run.action == "restore" and not extra_new:
        # Glance renames the older version back: it becomes the current one
        future = [dataclasses.replace(v, current=v is run.older) for v in run.versions]
    else:
        future.append(_images.Version(ref="", name="(new)", version="99999999T999999Z", sha256="", format=run.format,
                                      size=0, current=True))
    run.target.mark_use([v for v in future if v.ref and not v.current])
    delete, held = _images.plan_retention(future, desired.keep)
    by_ref = {v.ref: v for v in run.versions}
    run.delete = [by_ref[v.ref] for v in delete if v.ref]
    run.held = [by_ref[v.ref] for v in held if v.ref]
    for version in run.versions:
        version.in_use = next((v.in_use for v in future if v.ref == version.ref), version.in_use)


def apply_present(runs: list[CloudRun], source: _images.Artifact, desired: _images.Desired,
                  work_dir: str | None, stall_timeout: float = 300) -> None:
    """Convert once per needed format, read each artifact once, upload to every cloud at once."""
    active = [run for run in runs if run.error is None]
    for run in active:
        run.applied = True
    artifacts: dict[str, _images.Artifact] = {source.format: source}
    needed = sorted({run.format for run in active if run.action == "upload"} - {source.format})
    scratch = None
    try:
        for fmt in needed:
            try:
                if scratch is None:
                    scratch = tempfile.mkdtemp(prefix="hepinfra-image-", dir=work_dir)
                artifacts[fmt] = _images.convert(source, fmt, scratch)
                if _images.signature(source.path) != source.signature:
                    raise HepinfraError("%s changed while it was converted" % source.path)
            except (HepinfraError, OSError) as exc:
                for run in active:
                    if run.action == "upload" and run.format == fmt:
                        run.error = "cloud %s: converting the image to %s failed: %s" % (run.cloud.name, fmt, exc)
        version = _images.new_version()
        broadcasts: dict[str, _images.Broadcast] = {}
        for run in active:
            if run.error is None and run.action == "upload":
                artifact = artifacts[run.format]
                if run.format not in broadcasts:
                    broadcasts[run.format] = _images.Broadcast(
                        artifact.path, expected_size=artifact.size,
                        expected_sha256=source.sha256 if artifact is source else None, stall_timeout=stall_timeout)
                run.subscription = broadcasts[run.format].subscribe()

        def apply(run: CloudRun) -> None:
            target = run.target
            others = [v for v in run.versions if v.name == desired.name and v is not run.current]
            if run.action == "upload":
                try:
                    run.new = target.upload(artifacts[run.format], source, desired, version, iter(run.subscription),
                                            broadcasts[run.format], run.current)
                finally:
                    run.subscription.close()
                run.done.append("upload")
                target.promote(run.new, run.current, desired, others)
                run.done.append("promote")
            elif run.action == "restore":
                run.new = target.restore(run.older, run.current, desired, version, others)
                run.done.append("restore")
            else:
                if run.aside:
                    target.promote(run.current, None, desired, run.aside)
                    run.done.append("rename aside")
                if run.metadata:
                    target.apply_metadata(run.current, desired)
                    run.done.append("metadata")
            if run.delete:
                # instances may have started on an old version while this run uploaded: ask again
                target.mark_use(run.delete)
                for old in list(run.delete):
                    if old.complete and (old.in_use is not False or old.protected):
                        run.delete.remove(old)
                        run.held.append(old)
                        continue
                    target.delete(old)
                    run.deleted.append(old)

        apply.action = "uploading"  # type: ignore[attr-defined]
        threads = []
        for run in active:
            if run.error is None:
                thread = threading.Thread(target=parallel, args=([run], apply), daemon=True)
                thread.start()
                threads.append((run, thread))
        for broadcast in broadcasts.values():
            broadcast.start()
        for run, thread in threads:
            # a reader drops an upload that takes nothing for stall_timeout; one stuck inside a
            # client library call is given up on after twice that, and the others still finish
            while thread.is_alive():
                thread.join(timeout=stall_timeout)
                if thread.is_alive() and run.subscription is not None and not run.subscription.alive:
                    thread.join(timeout=stall_timeout)
                    if thread.is_alive():
                        run.error = "cloud %s: the upload hung for over %d s and was abandoned" % (
                            run.cloud.name, 2 * stall_timeout)
                        break
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def plan_absent(runs: list[CloudRun], desired: _images.Desired) -> None:
    def plan(run: CloudRun) -> None:
        run.versions = run.target.versions(desired.name)
        run.current = next((v for v in run.versions if v.current and v.complete), None)
        run.target.mark_use(run.versions)
        for version in run.versions:
            if version.in_use is not False or version.protected:
                run.held.append(version)
            else:
                run.delete.append(version)
        run.action = "delete" if run.delete else "none"

    plan.action = "planning"  # type: ignore[attr-defined]
    parallel([run for run in runs if run.error is None], plan)


def apply_absent(runs: list[CloudRun]) -> None:
    for run in runs:
        run.applied = run.error is None

    def apply(run: CloudRun) -> None:
        run.target.mark_use(run.delete)
        for version in list(run.delete):
            if version.complete and (version.in_use is not False or version.protected):
                run.delete.remove(version)
                run.held.append(version)
                continue
            run.target.delete(version)
            run.deleted.append(version)

    apply.action = "deleting"  # type: ignore[attr-defined]
    parallel([run for run in runs if run.error is None and run.delete], apply)
