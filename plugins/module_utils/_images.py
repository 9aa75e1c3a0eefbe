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
PROPERTY_PREFIX = "hepinfra_"
VERSION_PATTERN = re.compile(r"^\d{8}T\d{6}Z$")
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


def _signature(path: str) -> list[int]:
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
        if isinstance(entry, dict) and entry.get("signature") == _signature(path) and entry.get("sha256"):
            return str(entry["sha256"]), True
    signature = _signature(path)
    sha256 = sha256_file(path)
    if cache_file and write and _signature(path) == signature:
        cache = cache if isinstance(cache, dict) else {}
        cache[key] = {"signature": signature, "sha256": sha256, "at": time.time()}
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


class Broadcast:
    """Reads a file once and hands every chunk to each subscriber's bounded queue.

    A subscriber that fails calls ``close()``; the reader then skips it, so one broken upload
    never stalls the others.
    """

    def __init__(self, path: str, depth: int = 8) -> None:
        self.path = path
        self.depth = depth
        self.subscribers: list[Subscription] = []
        self.error: BaseException | None = None
        self.bytes_read = 0
        self.thread: threading.Thread | None = None
        # MD5 of everything read (Glance's checksum of an upload), final once `finished` is set
        self.md5 = hashlib.md5()  # nosec - compared with Glance's checksum field, not a security use
        self.finished = threading.Event()

    def subscribe(self) -> "Subscription":
        sub = Subscription(self.depth)
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
                    for sub in self.subscribers:
                        sub.offer(chunk)
        except OSError as exc:
            self.error = exc
        finally:
            self.finished.set()
            for sub in self.subscribers:
                sub.offer(None)

    def sent_md5(self, timeout: float = 600) -> str | None:
        """MD5 of the whole file once it has been read to the end; None if reading failed or stopped early."""
        if not self.finished.wait(timeout) or self.error is not None or self.bytes_read != os.path.getsize(self.path):
            return None
        return self.md5.hexdigest()


class Subscription:
    """One consumer's view of a Broadcast: iterate to get the chunks."""

    def __init__(self, depth: int) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.alive = True
        self.reader_failed = False

    def offer(self, chunk: bytes | None) -> None:
        while self.alive:
            try:
                self.queue.put(chunk, timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self.alive = False
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                return

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self.queue.get()
            if chunk is None:
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
               chunks: Iterator[bytes], reader: Broadcast) -> Version:
        raise NotImplementedError

    def restore(self, older: Version, current: Version | None, desired: Desired, version: str) -> Version:
        raise NotImplementedError

    def promote(self, new: Version, current: Version | None, desired: Desired) -> None:
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
        expiry = _clouds.credential_expiry(self.conn)
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
                size=int(image.size or 0), current=image.name == name, complete=image.status == "active",
                protected=bool(image.is_protected),
                extra={"status": image.status, "visibility": image.visibility, "tags": sorted(image.tags or []),
                       "checksum": image.checksum},
            ))
        # Two images under the plain name (a race, or hands): the newest is current.
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

    def upload(self, artifact: Artifact, source: Artifact, desired: Desired, version: str,
               chunks: Iterator[bytes], reader: Broadcast) -> Version:
        properties = {str(k): str(v) for k, v in desired.properties.items()}
        properties.update({
            "hepinfra_image": desired.name, "hepinfra_version": version, "hepinfra_sha256": source.sha256,
            "hepinfra_source_format": source.format,
        })
        attrs: dict[str, Any] = {}
        if desired.visibility:
            attrs["visibility"] = desired.visibility
        for key in ("min_disk", "min_ram"):
            if getattr(desired, key) is not None:
                attrs[key] = getattr(desired, key)
        # Uploaded under its aside name; promote() gives it the plain name once it is active,
        # so the name never points at a half-uploaded image.
        image = self.conn.image.create_image(
            "%s-%s" % (desired.name, version), data=counted(chunks, self), disk_format=artifact.format,
            container_format="bare", sha256=source.sha256 if artifact is source else None, validate_checksum=False,
            allow_duplicates=True, tags=sorted(set(desired.tags or [])), wait=True, **attrs, **properties,
        )
        image = self.conn.image.get_image(image.id)
        if image.status != "active":
            self.conn.image.delete_image(image.id, ignore_missing=True)
            raise HepinfraError("Glance left the upload in status %s" % image.status, target="cloud %s" % self.cloud.name)
        sent_md5 = reader.sent_md5()
        if sent_md5 is None or (image.checksum and image.checksum != sent_md5):
            self.conn.image.delete_image(image.id, ignore_missing=True)
            raise HepinfraError("Glance stored different bytes than were read (checksum %s, MD5 of the file %s)"
                                % (image.checksum, sent_md5 or "unknown: reading failed"), target="cloud %s" % self.cloud.name)
        if desired.protected:
            self._patch(image.id, {"protected": True})
        return Version(ref=image.id, name=image.name, version=version, sha256=source.sha256, format=artifact.format,
                       size=int(image.size or 0))

    def promote(self, new: Version, current: Version | None, desired: Desired) -> None:
        if current is not None:
            self._patch(current.ref, {"name": "%s-%s" % (desired.name, current.version or current.ref[:8])})
        self._patch(new.ref, {"name": desired.name})
        new.name = desired.name
        new.current = True
        if current is not None:
            current.current = False

    def restore(self, older: Version, current: Version | None, desired: Desired, version: str) -> Version:
        self.promote(older, current, desired)
        return older

    def mark_use(self, versions: list[Version]) -> None:
        if not self.conn.has_service("compute"):
            # No compute service in the catalog: no server can be using an image of this cloud.
            for version in versions:
                version.in_use = False
            return
        for version in versions:
            try:
                version.in_use = any(True for _server in self.conn.compute.servers(image=version.ref))
            except Exception as exc:  # pylint: disable=broad-exception-caught
                version.in_use = None
                self.warnings.append("cloud %s: could not tell whether image %s is in use (%s); kept"
                                     % (self.cloud.name, version.name, exc))

    def delete(self, version: Version) -> None:
        self.conn.image.delete_image(version.ref, ignore_missing=True)


# -- libvirt storage pools ------------------------------------------------------------------

def volume_name(name: str, version: str, sha256: str, fmt: str) -> str:
    return "%s-%s-%s.%s" % (name, version, sha256[:12], fmt)


def parse_volume_name(volume: str) -> tuple[str, str, str, str] | None:
    """(image name, version, sha12, format) of a volume this collection uploaded, else None."""
    match = re.match(r"^(?P<name>.+)-(?P<version>\d{8}T\d{6}Z)-(?P<sha>[0-9a-f]{12})\.(?P<fmt>qcow2|raw)$", volume)
    if not match:
        return None
    return match.group("name"), match.group("version"), match.group("sha"), match.group("fmt")


def volume_xml(name: str, capacity: int) -> str:
    from xml.sax.saxutils import escape  # pylint: disable=import-outside-toplevel

    return ("<volume><name>%s</name><capacity unit='bytes'>%d</capacity><allocation unit='bytes'>0</allocation>"
            "<target><format type='raw'/></target></volume>" % (escape(name), capacity))


def paths_in_use(domain_xmls: list[str], volume_xmls: list[str]) -> set[str]:
    """Every file a domain's disks or a volume's backing chain refer to."""
    from xml.etree import ElementTree  # pylint: disable=import-outside-toplevel

    used: set[str] = set()
    for text in domain_xmls:
        root = ElementTree.fromstring(text)
        for source in root.iter("source"):
            for attr in ("file", "dev", "volume"):
                if source.get(attr):
                    used.add(source.get(attr))
    for text in volume_xmls:
        root = ElementTree.fromstring(text)
        backing = root.find("backingStore/path")
        if backing is not None and backing.text:
            used.add(backing.text)
    return used


class LibvirtTarget(Target):
    kind = "libvirt"

    def __init__(self, cloud: Any, libraries: dict[str, Any]) -> None:
        super().__init__(cloud, libraries)
        self.libvirt = libraries["libvirt"]
        self.conn: Any = None
        self.pool: Any = None

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
        self.pool.refresh(0)

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
            if not parsed or parsed[0] != name:
                continue
            vol = self.pool.storageVolLookupByName(volume)
            _kind, capacity, allocation = vol.info()
            found.append(Version(ref=volume, name=volume, version=parsed[1], sha256=parsed[2], format=parsed[3],
                                 size=capacity, complete=volume + MARKER_SUFFIX not in volumes,
                                 extra={"path": vol.path(), "allocation": allocation}))
        complete = sorted((v for v in found if v.complete), key=lambda v: v.version, reverse=True)
        if complete:
            complete[0].current = True
        return found

    def _create(self, name: str, capacity: int) -> Any:
        return self.pool.createXML(volume_xml(name, capacity), 0)

    def upload(self, artifact: Artifact, source: Artifact, desired: Desired, version: str,
               chunks: Iterator[bytes], reader: Broadcast) -> Version:
        name = volume_name(desired.name, version, source.sha256, artifact.format)
        marker = self._create(name + MARKER_SUFFIX, 0)
        vol = None
        try:
            vol = self._create(name, artifact.size)
            stream = self.conn.newStream(0)
            vol.upload(stream, 0, artifact.size, self.libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
            try:
                for chunk in chunks:
                    if len(chunk) == CHUNK and chunk == ZERO_CHUNK:
                        stream.sendHole(len(chunk), 0)
                        continue
                    while chunk:
                        sent = stream.send(chunk)
                        if sent < 0:
                            raise HepinfraError("the upload stream to %s refused data" % name)
                        self.bytes_sent += sent
                        chunk = chunk[sent:]
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
        self.pool.refresh(0)
        vol = self.pool.storageVolLookupByName(name)
        return Version(ref=name, name=name, version=version, sha256=source.sha256[:12], format=artifact.format,
                       size=vol.info()[1], current=True, extra={"path": vol.path()})

    def restore(self, older: Version, current: Version | None, desired: Desired, version: str) -> Version:
        """An older version's content becomes current again: cloned inside the pool (nothing sent)."""
        name = volume_name(desired.name, version, older.sha256, older.format)
        source = self.pool.storageVolLookupByName(older.ref)
        xml = ("<volume><name>%s</name><capacity unit='bytes'>%d</capacity><target><format type='%s'/></target></volume>"
               % (name, source.info()[1], older.format))
        marker = self._create(name + MARKER_SUFFIX, 0)
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
        used = paths_in_use(domains, volumes)
        for version in versions:
            version.in_use = version.extra.get("path") in used

    def delete(self, version: Version) -> None:
        for name in (version.ref, version.ref + MARKER_SUFFIX):
            try:
                self.pool.storageVolLookupByName(name).delete(0)
            except self.libvirt.libvirtError:
                continue


TARGETS: dict[str, Callable[[Any, dict[str, Any]], Target]] = {"openstack": GlanceTarget, "libvirt": LibvirtTarget}
