# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM images on many clouds: versions, plans, one read of the source shared by every upload.

Each upload of an image name is a *version*, identified by the UTC time of its upload
(``20261128T120000Z``) and the SHA-256 of the source file it came from:

* OpenStack Glance: the current version carries the plain name; older versions are renamed
  ``<name>-<version>``. Every version has the properties ``hepinfra_image`` (the name),
  ``hepinfra_version``, ``hepinfra_sha256`` and ``hepinfra_source_format``.
* libvirt storage pools: volumes cannot be renamed and carry no metadata, so every version is a
  volume ``<name>-<version>-<sha256[:12]>.<format>`` and the current one is the newest. While a
  volume is being uploaded, an empty marker volume ``<volume>.uploading`` exists; a volume with
  a marker left by a killed run is incomplete and is deleted by the next run.

Pure planning (which version is current, what to upload, what retention removes) is plain
functions here; the targets do the cloud calls.

Private to this collection: the leading underscore means the API may change between releases.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError

CHUNK = 4 << 20
ZERO_CHUNK = bytes(CHUNK)
MARKER_SUFFIX = ".uploading"


def new_version(now: float | None = None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))


# -- the source -----------------------------------------------------------------------------

@dataclass
class Artifact:
    """Bytes to upload: the source file or a conversion of it."""

    path: str
    format: str
    size: int
    virtual_size: int
    sha256: str = ""
    signature: list[int] = field(default_factory=list)


def qemu_img_info(path: str) -> dict[str, Any]:
    proc = subprocess.run(["qemu-img", "info", "--output=json", path], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise HepinfraError("qemu-img cannot read %s: %s" % (path, proc.stderr.strip() or proc.stdout.strip()))
    return json.loads(proc.stdout)


def inspect_source(path: str, declared_format: str | None) -> Artifact:
    """Format and sizes of the source image; refuses backing chains and formats other than qcow2/raw."""
    if not os.path.isfile(path):
        raise HepinfraError("the image source %s is not a file" % path)
    info = qemu_img_info(path)
    detected = info.get("format")
    if info.get("backing-filename"):
        raise HepinfraError("%s has a backing file (%s); upload a flattened image" % (path, info["backing-filename"]),
                            hint="qemu-img convert -O qcow2 %s flat.qcow2" % path)
    if detected not in ("qcow2", "raw"):
        raise HepinfraError("%s is a %s image; qcow2 and raw are supported" % (path, detected))
    if declared_format and declared_format != detected:
        raise HepinfraError("%s is %s, not %s as disk_format says" % (path, detected, declared_format),
                            hint="Leave disk_format out to use the detected format")
    return Artifact(path=path, format=detected, size=os.path.getsize(path), virtual_size=int(info["virtual-size"]))


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def signature(path: str) -> list[int]:
    # ctime cannot be set from user space: any write to the file changes it
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


def cached_sha256(path: str, cache_file: str | None, write: bool = True) -> tuple[str, bool]:
    """SHA-256 of a file, from a cache keyed by path, size, mtime, ctime and inode when it is unchanged.

    Returns (sha256, whether it came from the cache). A missing or unreadable cache is ignored.
    """
    key = os.path.realpath(path)
    cache: dict[str, Any] = {}
    if cache_file:
        try:
            with open(cache_file, encoding="utf-8") as handle:
                cache = json.load(handle)
        except (OSError, ValueError):
            cache = {}
        entry = cache.get(key) if isinstance(cache, dict) else None
        if isinstance(entry, dict) and entry.get("signature") == signature(path) and entry.get("sha256"):
            return str(entry["sha256"]), True
    before = signature(path)
    sha256 = sha256_file(path)
    if signature(path) != before:
        raise HepinfraError("%s changed while it was hashed" % path, hint="Upload a file nothing is writing to")
    if cache_file and write:
        cache = cache if isinstance(cache, dict) else {}
        cache[key] = {"signature": before, "sha256": sha256, "at": time.time()}
        newest = sorted(cache.items(), key=lambda item: item[1].get("at", 0) if isinstance(item[1], dict) else 0)[-200:]
        try:
            os.makedirs(os.path.dirname(cache_file) or ".", mode=0o700, exist_ok=True)
            temporary = "%s.%d.tmp" % (cache_file, os.getpid())
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(dict(newest), handle)
            os.replace(temporary, cache_file)
        except OSError:
            pass  # a cache that cannot be written only costs the next run a hash
    return sha256, False


def convert(source: Artifact, target_format: str, directory: str) -> Artifact:
    """Convert the source once into target_format in directory."""
    base = os.path.basename(source.path).rsplit(".", 1)[0]
    path = os.path.join(directory, "%s.%s" % (base, target_format))
    proc = subprocess.run(["qemu-img", "convert", "-f", source.format, "-O", target_format, source.path, path],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise HepinfraError("qemu-img convert of %s to %s failed: %s" % (source.path, target_format, proc.stderr.strip()))
    return Artifact(path=path, format=target_format, size=os.path.getsize(path), virtual_size=source.virtual_size)


END = object()  # the reader's last word to each subscriber


class Broadcast:
    """Reads a file once and hands every chunk to each subscriber's bounded queue.

    A subscriber that fails calls ``close()``; the reader then skips it, and one that accepts
    nothing for ``stall_timeout`` seconds is dropped, so one broken or hung upload never stops
    the others. While reading, the reader takes the MD5 (Glance's checksum) and, when
    ``expected_sha256`` is given, the SHA-256 of the bytes: :meth:`outcome` tells each upload,
    before it commits anything, whether what it was sent is complete and is what was hashed.
    """

    def __init__(self, path: str, expected_size: int, expected_sha256: str | None = None, depth: int = 8,
                 stall_timeout: float = 300) -> None:
        self.path = path
        self.expected_size = expected_size
        self.expected_sha256 = expected_sha256
        self.depth = depth
        self.stall_timeout = stall_timeout
        self.subscribers: list[Subscription] = []
        self.error: str | None = None
        self.bytes_read = 0
        self.thread: threading.Thread | None = None
        self.md5 = hashlib.md5()  # nosec - compared with Glance's checksum field, not a security use
        self.sha256 = hashlib.sha256() if expected_sha256 else None
        self.finished = threading.Event()

    def subscribe(self) -> "Subscription":
        sub = Subscription(self.depth, self.stall_timeout)
        self.subscribers.append(sub)
        return sub

    def start(self) -> None:
        self.thread = threading.Thread(target=self._read, name="read %s" % self.path, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                while any(sub.alive for sub in self.subscribers):
                    chunk = handle.read(CHUNK)
                    if not chunk:
                        break
                    self.bytes_read += len(chunk)
                    self.md5.update(chunk)
                    if self.sha256 is not None:
                        self.sha256.update(chunk)
                    for sub in self.subscribers:
                        sub.offer(chunk)
            self.error = self._check()
        except BaseException as exc:  # pylint: disable=broad-exception-caught
            self.error = "%s: %s" % (type(exc).__name__, exc)
        finally:
            self.finished.set()
            for sub in self.subscribers:
                sub.offer(END)

    def _check(self) -> str | None:
        if self.bytes_read != self.expected_size:
            return "read %d bytes where %d were expected: the file changed while it was read" % (
                self.bytes_read, self.expected_size)
        if self.sha256 is not None and self.sha256.hexdigest() != self.expected_sha256:
            return ("its SHA-256 is now %s, not %s as hashed before the upload: the file changed (or the checksum "
                    "cache is stale)" % (self.sha256.hexdigest(), self.expected_sha256))
        return None

    def outcome(self, timeout: float = 600) -> str:
        """The MD5 of the whole file once read to the end and checked; raises HepinfraError otherwise."""
        if not self.finished.wait(timeout):
            raise HepinfraError("reading %s did not finish within %d s" % (self.path, timeout))
        if self.error is not None:
            raise HepinfraError("reading %s failed: %s" % (self.path, self.error))
        return self.md5.hexdigest()


class Subscription:
    """One consumer's view of a Broadcast: iterate to get the chunks."""

    def __init__(self, depth: int, stall_timeout: float = 300) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.alive = True
        self.stalled = False
        self.stall_timeout = stall_timeout

    def offer(self, chunk: Any) -> None:
        deadline = time.monotonic() + self.stall_timeout
        while self.alive:
            try:
                self.queue.put(chunk, timeout=0.5)
                return
            except queue.Full:
                if time.monotonic() > deadline:
                    self.stalled = True
                    self.close()

    def close(self) -> None:
        self.alive = False
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                return

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = self.queue.get(timeout=1)
            except queue.Empty:
                if not self.alive:
                    raise HepinfraError("the upload took no data for %d s and was dropped" % self.stall_timeout) from None
                continue
            if chunk is END:
                return
            yield chunk


# -- versions and plans ---------------------------------------------------------------------

@dataclass
class Version:
    """One stored version of an image on one cloud."""

    ref: str            # Glance image id or libvirt volume name
    name: str           # the name it carries there
    version: str
    sha256: str         # of the source it came from (libvirt: 12 hex digits)
    format: str
    size: int
    current: bool = False
    complete: bool = True
    in_use: bool | None = None
    protected: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"id": self.ref, "name": self.name, "version": self.version, "sha256": self.sha256,
                "format": self.format, "size": self.size, "current": self.current, "complete": self.complete,
                "in_use": self.in_use, "protected": self.protected, **self.extra}


def sha_matches(stored: str, sha256: str) -> bool:
    return bool(stored) and sha256.startswith(stored) and len(stored) >= 12


def plan_content(versions: list[Version], sha256: str) -> tuple[str, Version | None]:
    """What to do about the content: ('none', current) / ('restore', older same-content version) / ('upload', None)."""
    complete = [v for v in versions if v.complete]
    current = next((v for v in complete if v.current), None)
    if current is not None and sha_matches(current.sha256, sha256):
        return "none", current
    same = sorted((v for v in complete if sha_matches(v.sha256, sha256)), key=lambda v: v.version, reverse=True)
    if same:
        return "restore", same[0]
    return "upload", None


def plan_retention(versions: list[Version], keep: int) -> tuple[list[Version], list[Version]]:
    """(to delete, kept because in use or protected): the newest `keep` complete versions stay, the current always.

    Incomplete versions (interrupted uploads) are always deleted; a version whose use is unknown
    (in_use None) is kept.
    """
    complete = sorted((v for v in versions if v.complete), key=lambda v: (v.current, v.version), reverse=True)
    delete = [v for v in versions if not v.complete]
    held = []
    for version in complete[keep:]:
        if version.current:
            continue
        if version.in_use is not False or version.protected:
            held.append(version)
        else:
            delete.append(version)
    return delete, held


# -- a cloud target -------------------------------------------------------------------------

@dataclass
class Desired:
    """What the task asks for."""

    name: str
    state: str
    keep: int
    properties: dict[str, str] = field(default_factory=dict)
    visibility: str | None = None
    tags: list[str] | None = None
    min_disk: int | None = None
    min_ram: int | None = None
    protected: bool | None = None


class Target:
    """One cloud's side of an image task: list versions, plan, apply. Subclasses per cloud type."""

    kind = ""

    def __init__(self, cloud: Any, libraries: dict[str, Any]) -> None:
        self.cloud = cloud
        self.libraries = libraries
        self.warnings: list[str] = []
        self.bytes_sent = 0

    def connect(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the connection."""

    def versions(self, name: str) -> list[Version]:
        raise NotImplementedError

    def names(self) -> list[str]:
        """Every image name this collection manages on the cloud."""
        raise NotImplementedError

    def metadata_changes(self, current: Version, desired: Desired) -> dict[str, Any]:
        """{field: (before, after)} for what differs besides the content."""
        return {}

    def apply_metadata(self, current: Version, desired: Desired) -> None:
        """Bring properties, visibility and tags of the current version in line."""

    def upload(self, artifact: Artifact, source: Artifact, desired: Desired, version: str,
               chunks: Iterator[bytes], reader: Broadcast, current: Version | None = None) -> Version:
        raise NotImplementedError

    def restore(self, older: Version, current: Version | None, desired: Desired, version: str,
                others: list[Version] | None = None) -> Version:
        raise NotImplementedError

    def promote(self, new: Version, current: Version | None, desired: Desired,
                others: list[Version] | None = None) -> None:
        """Make an uploaded version the current one."""

    def mark_use(self, versions: list[Version]) -> None:
        """Set in_use on each version."""

    def delete(self, version: Version) -> None:
        raise NotImplementedError


def counted(chunks: Iterator[bytes], target: Target) -> Iterator[bytes]:
    for chunk in chunks:
        target.bytes_sent += len(chunk)
        yield chunk


# -- OpenStack Glance -----------------------------------------------------------------------

# Glance statuses of an upload that never finished (a killed run): such versions are removed.
INTERRUPTED = ("queued", "saving", "uploading", "importing", "killed")
# What Glance itself sets on an image; everything else is a property a new version inherits.
GLANCE_CORE = {
    "id", "name", "status", "visibility", "protected", "os_hidden", "checksum", "os_hash_algo", "os_hash_value",
    "owner", "size", "virtual_size", "min_ram", "min_disk", "created_at", "updated_at", "tags", "self", "file",
    "schema", "disk_format", "container_format", "locations", "direct_url", "stores", "os_glance_failed_import",
    "os_glance_importing_to_stores",
}


class GlanceTarget(Target):
    kind = "openstack"

    def __init__(self, cloud: Any, libraries: dict[str, Any]) -> None:
        super().__init__(cloud, libraries)
        self.conn: Any = None
        self._images: list[Any] | None = None

    def connect(self) -> None:
        from ansible_collections.hepinfra.cloud.plugins.module_utils import _clouds  # pylint: disable=import-outside-toplevel

        self.conn = _clouds.openstack_connection(self.cloud)
        self.conn.authorize()
        try:
            expiry = _clouds.credential_expiry(self.conn)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            # access rules or policy may forbid reading the credential: that must not stop the work
            self.warnings.append("cloud %s: could not read the application credential's expiry (%s)"
                                 % (self.cloud.name, type(exc).__name__))
            return
        if expiry:
            warning = _clouds.expiry_warning(self.cloud, expiry["expires_at"])
            if warning:
                self.warnings.append(warning)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def _all(self) -> list[Any]:
        if self._images is None:
            self._images = list(self.conn.image.images(owner=self.conn.current_project_id))
        return self._images

    @staticmethod
    def _props(image: Any) -> dict[str, Any]:
        return dict(getattr(image, "properties", None) or {})

    def names(self) -> list[str]:
        return sorted({self._props(i).get("hepinfra_image") for i in self._all() if self._props(i).get("hepinfra_image")})

    def versions(self, name: str) -> list[Version]:
        found = []
        for image in self._all():
            props = self._props(image)
            if props.get("hepinfra_image") != name:
                continue
            found.append(Version(
                ref=image.id, name=image.name, version=str(props.get("hepinfra_version", "")),
                sha256=str(props.get("hepinfra_sha256", "")), format=image.disk_format or "",
                size=int(image.size or 0), current=image.name == name, complete=image.status not in INTERRUPTED,
                protected=bool(image.is_protected),
                extra={"status": image.status, "visibility": image.visibility, "tags": sorted(image.tags or []),
                       "checksum": image.checksum},
            ))
        # Two images under the plain name (a killed promote, or hands): the newest is current,
        # promote() renames the others aside.
        currents = sorted((v for v in found if v.current), key=lambda v: v.version, reverse=True)
        for stale in currents[1:]:
            stale.current = False
        return found

    def _raw(self, ref: str) -> dict[str, Any]:
        """The image as Glance's API shows it: every property flat, by its API name."""
        response = self.conn.image.get("/images/%s" % ref)
        response.raise_for_status()
        return response.json()

    def _patch(self, ref: str, values: dict[str, Any]) -> None:
        """Set properties by their API names with a JSON patch (add or replace, as Glance needs)."""
        if not values:
            return
        raw = self._raw(ref)
        operations = [{"op": "replace" if key in raw else "add", "path": "/%s" % key, "value": value}
                      for key, value in sorted(values.items())]
        response = self.conn.image.patch("/images/%s" % ref, json=operations,
                                         headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})
        response.raise_for_status()

    def metadata_changes(self, current: Version, desired: Desired) -> dict[str, Any]:
        raw = self._raw(current.ref)
        changes: dict[str, Any] = {}
        for key, value in sorted(desired.properties.items()):
            if key not in raw or str(raw[key]) != str(value):
                changes["properties.%s" % key] = (raw.get(key), str(value))
        if desired.visibility and raw.get("visibility") != desired.visibility:
            changes["visibility"] = (raw.get("visibility"), desired.visibility)
        tags = sorted(raw.get("tags") or [])
        if desired.tags is not None and tags != sorted(set(desired.tags)):
            changes["tags"] = (tags, sorted(set(desired.tags)))
        for attr, wanted in (("min_disk", desired.min_disk), ("min_ram", desired.min_ram)):
            if wanted is not None and int(raw.get(attr) or 0) != wanted:
                changes[attr] = (int(raw.get(attr) or 0), wanted)
        if desired.protected is not None and bool(raw.get("protected")) != desired.protected:
            changes["protected"] = (bool(raw.get("protected")), desired.protected)
        return changes

    def apply_metadata(self, current: Version, desired: Desired) -> None:
        changes = self.metadata_changes(current, desired)
        values: dict[str, Any] = {}
        for key, (_before, after) in changes.items():
            if key.startswith("properties."):
                values[key.split(".", 1)[1]] = after
            elif key != "tags":
                values[key] = after
        self._patch(current.ref, values)
        if "tags" in changes:
            before, after = changes["tags"]
            for tag in sorted(set(after) - set(before)):
                self._tag("PUT", current.ref, tag)
            for tag in sorted(set(before) - set(after)):
                self._tag("DELETE", current.ref, tag)

    def _tag(self, method: str, ref: str, tag: str) -> None:
        from urllib.parse import quote  # pylint: disable=import-outside-toplevel

        response = self.conn.image.request("/images/%s/tags/%s" % (ref, quote(tag, safe="")), method)
        response.raise_for_status()

    def _inherited(self, current: Version | None) -> dict[str, Any]:
        """What a new version takes over from the current one: its properties, visibility, minimums."""
        if current is None:
            return {}
        raw = self._raw(current.ref)
        inherited = {key: value for key, value in raw.items()
                     if key not in GLANCE_CORE and not key.startswith(("hepinfra_", "owner_specified.", "os_glance"))}
        for key in ("visibility", "min_disk", "min_ram"):
            if raw.get(key) is not None:
                inherited[key] = raw[key]
        inherited["tags"] = sorted(raw.get("tags") or [])
        return inherited

    def upload(self, artifact: Artifact, source: Artifact, desired: Desired, version: str,
               chunks: Iterator[bytes], reader: Broadcast, current: Version | None = None) -> Version:
        attrs = self._inherited(current)
        tags = attrs.pop("tags", [])
        attrs.update({str(k): str(v) for k, v in desired.properties.items()})
        if desired.tags is not None:
            tags = sorted(set(desired.tags))
        for key in ("visibility", "min_disk", "min_ram"):
            if getattr(desired, key) is not None:
                attrs[key] = getattr(desired, key)
        attrs.update({
            "hepinfra_image": desired.name, "hepinfra_version": version, "hepinfra_sha256": source.sha256,
            "hepinfra_source_format": source.format,
        })
        # Uploaded under its aside name; promote() gives it the plain name once it is active and
        # checked, so the name never points at a half-uploaded image.
        image = self.conn.image.create_image(
            "%s-%s" % (desired.name, version), data=counted(chunks, self), disk_format=artifact.format,
            container_format="bare", sha256=source.sha256 if artifact is source else None, validate_checksum=False,
            allow_duplicates=True, tags=tags, properties=attrs,
        )
        try:
            sent_md5 = reader.outcome()
            image = self.conn.image.get_image(image.id)
            if image.status != "active":
                raise HepinfraError("Glance left the upload in status %s" % image.status)
            if image.checksum and image.checksum != sent_md5:
                raise HepinfraError("Glance stored different bytes than were read (checksum %s, MD5 of the file %s)"
                                    % (image.checksum, sent_md5))
            if desired.protected:
                self._patch(image.id, {"protected": True})
        except BaseException:
            self.conn.image.delete_image(image.id, ignore_missing=True)
            raise
        return Version(ref=image.id, name=image.name, version=version, sha256=source.sha256, format=artifact.format,
                       size=int(image.size or 0))

    def promote(self, new: Version, current: Version | None, desired: Desired,
                others: list[Version] | None = None) -> None:
        # The new version takes the plain name first: a killed run leaves two images under it
        # (the next run renames the older aside), never none.
        self._patch(new.ref, {"name": desired.name})
        for old in [current] + list(others or []):
            if old is not None and old.ref != new.ref and old.name == desired.name:
                old.name = "%s-%s" % (desired.name, old.version or old.ref[:8])
                self._patch(old.ref, {"name": old.name})
                old.current = False
        new.name = desired.name
        new.current = True

    def restore(self, older: Version, current: Version | None, desired: Desired, version: str,
                others: list[Version] | None = None) -> Version:
        self.promote(older, current, desired, others)
        self.apply_metadata(older, desired)
        return older

    def mark_use(self, versions: list[Version]) -> None:
        has_compute = self.conn.has_service("compute")
        for version in versions:
            if version.extra.get("visibility") in ("public", "community"):
                # servers of other projects may use it, and this project cannot see them
                version.in_use = None
                continue
            if not has_compute:
                # no compute service in the catalog: no server can be using an image of this cloud
                version.in_use = False
                continue
            try:
                version.in_use = any(True for _server in self.conn.compute.servers(image=version.ref))
            except Exception as exc:  # pylint: disable=broad-exception-caught
                version.in_use = None
                self.warnings.append("cloud %s: could not tell whether image %s is in use (%s); kept"
                                     % (self.cloud.name, version.name, exc))

    def delete(self, version: Version) -> None:
        self.conn.image.delete_image(version.ref, ignore_missing=True)


# -- libvirt storage pools ------------------------------------------------------------------

SPARSE_POOL_TYPES = ("dir", "fs", "netfs")


def volume_name(name: str, version: str, sha256: str, fmt: str) -> str:
    return "%s-%s-%s.%s" % (name, version, sha256[:12], fmt)


def parse_volume_name(volume: str) -> tuple[str, str, str, str] | None:
    """(image name, version, sha12, format) of a volume this collection uploaded, else None."""
    match = re.match(r"^(?P<name>.+)-(?P<version>\d{8}T\d{6}Z)-(?P<sha>[0-9a-f]{12})\.(?P<fmt>qcow2|raw)$", volume)
    if not match:
        return None
    return match.group("name"), match.group("version"), match.group("sha"), match.group("fmt")


def stream_send(stream: Any, data: bytes, what: str) -> int:
    """Send all of data into a libvirt stream (send may take part of it); returns the bytes sent."""
    total = 0
    while data:
        sent = stream.send(data)
        if sent is None or sent <= 0:
            raise HepinfraError("the upload stream to %s refused data after %d bytes" % (what, total))
        total += sent
        data = data[sent:]
    return total


def volume_xml(name: str, capacity: int, sparse: bool = True, fmt: str = "raw") -> str:
    from xml.sax.saxutils import escape  # pylint: disable=import-outside-toplevel

    # Block pools (LVM and others) need the space up front: a sparse LV is a snapshot that
    # turns invalid once it fills up.
    allocation = 0 if sparse else capacity
    return ("<volume><name>%s</name><capacity unit='bytes'>%d</capacity><allocation unit='bytes'>%d</allocation>"
            "<target><format type='%s'/></target></volume>" % (escape(name), capacity, allocation, escape(fmt)))


def disk_references(domain_xmls: list[str], volume_xmls: list[str]) -> tuple[set[str], set[tuple[str, str]]]:
    """(paths, (pool, volume) pairs) every domain disk and every volume's backing chain refer to.

    Network disks count by their name (for RBD, ``pool/image``).
    """
    from xml.etree import ElementTree  # pylint: disable=import-outside-toplevel

    paths: set[str] = set()
    volumes: set[tuple[str, str]] = set()
    for text in domain_xmls:
        root = ElementTree.fromstring(text)
        for source in root.iter("source"):
            for attr in ("file", "dev", "name"):
                if source.get(attr):
                    paths.add(source.get(attr))
            if source.get("pool") and source.get("volume"):
                volumes.add((source.get("pool"), source.get("volume")))
    for text in volume_xmls:
        root = ElementTree.fromstring(text)
        backing = root.find("backingStore/path")
        if backing is not None and backing.text:
            paths.add(backing.text)
    return paths, volumes


class LibvirtTarget(Target):
    kind = "libvirt"

    def __init__(self, cloud: Any, libraries: dict[str, Any]) -> None:
        super().__init__(cloud, libraries)
        self.libvirt = libraries["libvirt"]
        self.conn: Any = None
        self.pool: Any = None
        self.sparse = True

    def connect(self) -> None:
        self.libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        self.conn = self.libvirt.open(self.cloud.libvirt["uri"])
        try:
            self.pool = self.conn.storagePoolLookupByName(self.cloud.libvirt["pool"])
        except self.libvirt.libvirtError as exc:
            raise HepinfraError("no storage pool %s: %s" % (self.cloud.libvirt["pool"], exc.get_error_message()),
                                target="cloud %s" % self.cloud.name) from None
        if not self.pool.isActive():
            raise HepinfraError("storage pool %s is not active" % self.cloud.libvirt["pool"],
                                target="cloud %s" % self.cloud.name, hint="virsh pool-start %s" % self.cloud.libvirt["pool"])
        match = re.search(r"<pool type=['\"](\w+)['\"]", self.pool.XMLDesc(0))
        self.sparse = bool(match) and match.group(1) in SPARSE_POOL_TYPES
        self._refresh()

    def _refresh(self) -> None:
        """Refresh the pool; libvirt refuses while a volume is being built in it, so wait for that."""
        for attempt in range(30):
            try:
                self.pool.refresh(0)
                return
            except self.libvirt.libvirtError as exc:
                if "asynchronous jobs" not in (exc.get_error_message() or "") or attempt == 29:
                    raise
                time.sleep(2)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def _volumes(self) -> list[str]:
        return list(self.pool.listVolumes())

    def names(self) -> list[str]:
        return sorted({parsed[0] for parsed in map(parse_volume_name, self._volumes()) if parsed})

    def versions(self, name: str) -> list[Version]:
        volumes = set(self._volumes())
        found = []
        for volume in volumes:
            parsed = parse_volume_name(volume)
            if parsed and parsed[0] == name:
                vol = self.pool.storageVolLookupByName(volume)
                _kind, capacity, allocation = vol.info()
                found.append(Version(ref=volume, name=volume, version=parsed[1], sha256=parsed[2], format=parsed[3],
                                     size=capacity, complete=volume + MARKER_SUFFIX not in volumes,
                                     extra={"path": vol.path(), "allocation": allocation}))
            elif volume.endswith(MARKER_SUFFIX) and volume[:-len(MARKER_SUFFIX)] not in volumes:
                # a marker whose volume was never created (a run killed in between)
                parsed = parse_volume_name(volume[:-len(MARKER_SUFFIX)])
                if parsed and parsed[0] == name:
                    found.append(Version(ref=volume[:-len(MARKER_SUFFIX)], name=volume, version=parsed[1],
                                         sha256=parsed[2], format=parsed[3], size=0, complete=False))
        complete = sorted((v for v in found if v.complete), key=lambda v: v.version, reverse=True)
        if complete:
            complete[0].current = True
        return found

    def _create(self, name: str, capacity: int, fmt: str = "raw") -> Any:
        return self.pool.createXML(volume_xml(name, capacity, self.sparse, fmt), 0)

    def _marker(self, name: str) -> Any:
        return self._create(name + MARKER_SUFFIX, 0 if self.sparse else 1 << 20)

    def upload(self, artifact: Artifact, source: Artifact, desired: Desired, version: str,
               chunks: Iterator[bytes], reader: Broadcast, current: Version | None = None) -> Version:
        name = volume_name(desired.name, version, source.sha256, artifact.format)
        marker = self._marker(name)
        vol = None
        try:
            vol = self._create(name, artifact.size)
            stream = self.conn.newStream(0)
            flags = self.libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM if self.sparse else 0
            vol.upload(stream, 0, artifact.size, flags)
            try:
                for chunk in chunks:
                    if self.sparse and len(chunk) == CHUNK and chunk == ZERO_CHUNK:
                        stream.sendHole(len(chunk), 0)
                        continue
                    self.bytes_sent += stream_send(stream, chunk, name)
                reader.outcome()  # complete and what was hashed, or the volume is thrown away
                stream.finish()
            except BaseException:
                try:
                    stream.abort()
                except self.libvirt.libvirtError:
                    pass
                raise
            marker.delete(0)
        except BaseException:
            for leftover in (vol, marker):
                if leftover is not None:
                    try:
                        leftover.delete(0)
                    except self.libvirt.libvirtError:
                        pass
            raise
        vol = self.pool.storageVolLookupByName(name)
        try:
            self._refresh()  # lets libvirt probe the format it now holds
        except self.libvirt.libvirtError as exc:
            self.warnings.append("cloud %s: pool refresh after the upload failed (%s)"
                                 % (self.cloud.name, exc.get_error_message()))
        return Version(ref=name, name=name, version=version, sha256=source.sha256[:12], format=artifact.format,
                       size=artifact.virtual_size, current=True, extra={"path": vol.path()})

    def restore(self, older: Version, current: Version | None, desired: Desired, version: str,
                others: list[Version] | None = None) -> Version:
        """An older version's content becomes current again: cloned inside the pool (nothing sent)."""
        name = volume_name(desired.name, version, older.sha256, older.format)
        source = self.pool.storageVolLookupByName(older.ref)
        xml = volume_xml(name, source.info()[1], self.sparse, older.format)
        marker = self._marker(name)
        try:
            vol = self.pool.createXMLFrom(xml, source, 0)
            marker.delete(0)
        except BaseException:
            try:
                self.pool.storageVolLookupByName(name).delete(0)
            except self.libvirt.libvirtError:
                pass
            marker.delete(0)
            raise
        if current is not None:
            current.current = False
        return Version(ref=name, name=name, version=version, sha256=older.sha256, format=older.format,
                       size=vol.info()[1], current=True, extra={"path": vol.path()})

    def mark_use(self, versions: list[Version]) -> None:
        domains = [dom.XMLDesc(0) for dom in self.conn.listAllDomains(0)]
        volumes = []
        for pool in self.conn.listAllStoragePools(self.libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
            for vol in pool.listAllVolumes(0):
                try:
                    volumes.append(vol.XMLDesc(0))
                except self.libvirt.libvirtError:
                    continue  # removed meanwhile
        paths, pool_volumes = disk_references(domains, volumes)
        pool_name = self.cloud.libvirt["pool"]
        for version in versions:
            version.in_use = version.extra.get("path") in paths or (pool_name, version.ref) in pool_volumes

    def delete(self, version: Version) -> None:
        """Delete the volume, then its marker (a volume without its marker would count as complete)."""
        for name in (version.ref, version.ref + MARKER_SUFFIX):
            try:
                vol = self.pool.storageVolLookupByName(name)
            except self.libvirt.libvirtError as exc:
                if exc.get_error_code() == self.libvirt.VIR_ERR_NO_STORAGE_VOL:
                    continue
                raise
            vol.delete(0)


TARGETS: dict[str, Callable[[Any, dict[str, Any]], Target]] = {"openstack": GlanceTarget, "libvirt": LibvirtTarget}
