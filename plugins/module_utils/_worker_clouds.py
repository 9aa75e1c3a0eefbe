# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Worker instances on the clouds: list the owned ones, launch, mark, delete.

OpenStack through openstacksdk (Nova servers with metadata); libvirt through libvirt-python
(a qcow2 overlay per worker on the current image version in the pool, a NoCloud seed ISO
volume, a domain carrying its ownership in a ``<metadata>`` element of the collection's own
XML namespace).

Private to this collection: the leading underscore means the API may change between releases.
"""

from __future__ import annotations

import base64
import io
import posixpath
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

from ansible_collections.hepinfra.cloud.plugins.module_utils import _clouds, _images
from ansible_collections.hepinfra.cloud.plugins.module_utils import _workers as W
from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError

XML_NAMESPACE = "https://hepinfra.cloud/xmlns/worker/1"
XML_PREFIX = "hepinfra"
OVERLAY_SUFFIX = ".qcow2"
# Seconds a worker's disks must be unchanged before they count as leftovers (see leftovers()).
LEFTOVER_GRACE = 600
SEED_SUFFIX = "-seed.iso"


@dataclass
class Launch:
    """Everything one new worker needs."""

    name: str
    uuid: str
    metadata: dict[str, str]
    user_data: bytes
    flavor: str
    image: str
    network: str | None = None
    key_name: str | None = None
    security_groups: list[str] = field(default_factory=list)


@dataclass
class Flavor:
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int = 0
    enabled: bool = True          # a disabled flavor takes no new servers; running ones may have it


@dataclass
class Usage:
    """Cores, RAM and instances in use, and the cloud's own quota where it has one (None: none known)."""

    cores: int = 0
    ram_mb: int = 0
    instances: int = 0
    quota: dict[str, int | None] = field(default_factory=dict)


class Provider:
    """One cloud's instances. Methods may be called from several threads at once."""

    def __init__(self, cloud: _clouds.Cloud, libraries: dict[str, Any]) -> None:
        self.cloud = cloud
        self.libraries = libraries
        self.foreign: list[str] = []     # look-alike names the module does not own (reported, never touched)
        self.warnings: list[str] = []

    def connect(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the connection."""

    def workers(self, group: str | None) -> list[W.Worker]:
        raise NotImplementedError

    def prepare(self, flavor: str, image: str, network: str | None) -> dict[str, Any]:
        """Resolve names once for many launches; fails clearly when one does not exist."""
        raise NotImplementedError

    def launch(self, spec: Launch, resolved: dict[str, Any]) -> W.Worker:
        raise NotImplementedError

    def delete(self, worker: W.Worker) -> None:
        raise NotImplementedError

    def mark(self, worker: W.Worker, key: str, value: str) -> None:
        """Record one more ownership metadata key (drain time, first registration) in the instance."""
        raise NotImplementedError

    def leftovers(self, group: str | None, live: set[str]) -> list[str]:
        """Storage of workers whose instance is gone (libvirt only)."""
        return []

    def flavors(self) -> list[Flavor]:
        """The flavors workers can be launched with, and their size."""
        raise NotImplementedError

    def usage(self) -> Usage:
        """What runs on the cloud now, workers or not (the project's usage and quota on OpenStack,
        the active domains of the hypervisor on libvirt)."""
        raise NotImplementedError

    def remove_leftover(self, name: str) -> None:
        """Delete one leftover found by leftovers()."""


# -- OpenStack ----------------------------------------------------------------------------

NOVA_STATES = {"ACTIVE": W.ACTIVE, "BUILD": W.BUILDING, "REBUILD": W.BUILDING, "REBOOT": W.ACTIVE,
               "HARD_REBOOT": W.ACTIVE, "MIGRATING": W.ACTIVE, "RESIZE": W.ACTIVE, "VERIFY_RESIZE": W.ACTIVE,
               "ERROR": W.FAILED, "SHUTOFF": W.STOPPED, "STOPPED": W.STOPPED, "SUSPENDED": W.STOPPED,
               "PAUSED": W.STOPPED, "SHELVED": W.STOPPED, "SHELVED_OFFLOADED": W.STOPPED,
               "DELETED": W.GONE, "SOFT_DELETED": W.GONE}


# Seconds between the attempts of a repeatable OpenStack call after a transient error.
RETRY_DELAYS = (1.0, 3.0)
TRANSIENT_STATUS = frozenset((500, 502, 503, 504))


def transient(exc: BaseException) -> bool:
    """A server error or a dropped connection: worth one more try for a read or a delete
    (a Nova API whose Neutron call failed answers 500 for that moment)."""
    if getattr(exc, "status_code", None) in TRANSIENT_STATUS:
        return True
    return any(kind.__name__ == "RetriableConnectionFailure" for kind in type(exc).__mro__)


class OpenStackProvider(Provider):

    def __init__(self, cloud: _clouds.Cloud, libraries: dict[str, Any]) -> None:
        super().__init__(cloud, libraries)
        self.conn: Any = None

    def connect(self) -> None:
        if self.libraries.get("openstack") is None:
            raise HepinfraError("openstacksdk is not installed where the module runs", target="cloud %s" % self.cloud.name,
                                hint="pip install openstacksdk")
        try:
            self.conn = _clouds.openstack_connection(self.cloud)
            self.conn.authorize()
        except Exception as exc:  # pylint: disable=broad-exception-caught
            raise _clouds.openstack_error(self.cloud, exc, "connect") from None
        try:
            expiry = _clouds.credential_expiry(self.conn)
        except Exception:  # pylint: disable=broad-exception-caught
            expiry = None
        if expiry:
            warning = _clouds.expiry_warning(self.cloud, _clouds.parse_time(expiry.get("expires_at")))
            if warning:
                self.warnings.append(warning)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def _call(self, action: str, function: Any, *args: Any, retry: bool = True, **kwargs: Any) -> Any:
        """Call the API; a call that can be repeated safely is, after a transient server error
        (RETRY_DELAYS apart). A create is never repeated: a lost answer could mean two servers."""
        delays = list(RETRY_DELAYS) if retry else []
        while True:
            try:
                return function(*args, **kwargs)
            except HepinfraError:
                raise
            except Exception as exc:  # pylint: disable=broad-exception-caught
                if delays and transient(exc):
                    time.sleep(delays.pop(0))
                    continue
                raise _clouds.openstack_error(self.cloud, exc, action) from None

    def workers(self, group: str | None) -> list[W.Worker]:
        pattern = "^" + re.escape(W.prefix(group, self.cloud.name) if group else "")
        servers = self._call("list servers", lambda: list(self.conn.compute.servers(details=True, name=pattern)))
        found = []
        self.foreign = []
        for server in servers:
            metadata = dict(server.metadata or {})
            if not W.owned(server.name, metadata, self.cloud.name):
                if W.SEPARATOR in server.name and (group is None or server.name.startswith(group + W.SEPARATOR)):
                    self.foreign.append(server.name)
                continue
            addresses = [entry.get("addr") for entries in (server.addresses or {}).values() for entry in entries
                         if entry.get("addr")]
            fault = (server.fault or {}).get("message", "") if isinstance(server.fault, dict) else ""
            found.append(W.worker_from(server.name, metadata, server.id, NOVA_STATES.get(server.status, W.BUILDING),
                                       server.status, addresses, fault))
        return found

    def prepare(self, flavor: str, image: str, network: str | None) -> dict[str, Any]:
        compute, image_api, network_api = self.conn.compute, self.conn.image, self.conn.network
        found_flavor = self._call("find flavor %s" % flavor, compute.find_flavor, flavor, ignore_missing=True)
        if found_flavor is None:
            raise HepinfraError("no flavor %s" % flavor, target="cloud %s" % self.cloud.name)
        found_image = self._call("find image %s" % image, image_api.find_image, image, ignore_missing=True)
        if found_image is None:
            raise HepinfraError("no image %s" % image, target="cloud %s" % self.cloud.name,
                                hint="Upload it with hepinfra.cloud.image")
        resolved: dict[str, Any] = {"flavor": found_flavor, "image": found_image, "network": None}
        if network:
            found_network = self._call("find network %s" % network, network_api.find_network, network,
                                       ignore_missing=True)
            if found_network is None:
                raise HepinfraError("no network %s" % network, target="cloud %s" % self.cloud.name)
            resolved["network"] = found_network
        return resolved

    def launch(self, spec: Launch, resolved: dict[str, Any]) -> W.Worker:
        arguments: dict[str, Any] = {
            "name": spec.name, "flavor_id": resolved["flavor"].id, "image_id": resolved["image"].id,
            "metadata": spec.metadata, "user_data": base64.b64encode(spec.user_data).decode("ascii"),
            "networks": [{"uuid": resolved["network"].id}] if resolved["network"] is not None else "none",
        }
        if spec.key_name:
            arguments["key_name"] = spec.key_name
        if spec.security_groups:
            arguments["security_groups"] = [{"name": name} for name in spec.security_groups]
        server = self._call("create server %s" % spec.name, self.conn.compute.create_server, retry=False, **arguments)
        return W.worker_from(spec.name, spec.metadata, server.id, W.BUILDING, server.status or "BUILD")

    def delete(self, worker: W.Worker) -> None:
        self._call("delete server %s" % worker.name, self.conn.compute.delete_server, worker.instance_id,
                   ignore_missing=True)

    def mark(self, worker: W.Worker, key: str, value: str) -> None:
        self._call("set metadata of %s" % worker.name, self.conn.compute.set_server_metadata, worker.instance_id,
                   **{key: value})

    def flavors(self) -> list[Flavor]:
        found = self._call("list flavors", lambda: list(self.conn.compute.flavors(details=True)))
        return [Flavor(f.name, int(f.vcpus or 0), int(f.ram or 0), int(f.disk or 0),
                       not getattr(f, "is_disabled", False)) for f in found]

    def usage(self) -> Usage:
        limits = self._call("read the project's limits", self.conn.compute.get_limits).absolute

        def quota(value: Any) -> int | None:
            return None if value is None or int(value) < 0 else int(value)
        return Usage(cores=int(limits.total_cores_used or 0), ram_mb=int(limits.total_ram_used or 0),
                     instances=int(limits.instances_used or 0),
                     quota={"cores": quota(limits.total_cores), "ram_mb": quota(limits.total_ram),
                            "instances": quota(limits.instances)})


# -- libvirt -------------------------------------------------------------------------------

def metadata_xml(metadata: dict[str, str]) -> str:
    """The ``<metadata>`` element body: one ``<worker>`` whose attributes are the ownership keys."""
    attributes = " ".join("%s=%s" % (key[len("hepinfra_"):], quoteattr(str(value)))
                          for key, value in sorted(metadata.items()))
    return "<worker %s/>" % attributes


def parse_metadata(text: str) -> dict[str, str]:
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return {}
    if root.tag.split("}")[-1] != "worker":
        return {}
    return {"hepinfra_" + key: value for key, value in root.attrib.items()}


def seed_iso(user_data: bytes, instance_id: str, hostname: str, pycdlib: Any) -> bytes:
    """A NoCloud seed: an ISO 9660 volume labelled ``cidata`` with user-data and meta-data."""
    meta_data = ("instance-id: %s\nlocal-hostname: %s\n" % (instance_id, hostname)).encode()
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name, payload in (("user-data", user_data), ("meta-data", meta_data)):
        iso_name = "/%s.;1" % name.upper().replace("-", "_")
        iso.add_fp(io.BytesIO(payload), len(payload), iso_name, rr_name=name, joliet_path="/" + name)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def domain_xml(spec: Launch, settings: dict[str, Any], overlay_path: str, seed_path: str, network: str | None) -> str:
    """The worker's domain: its overlay and seed, a virtio NIC on the cloud's network, a serial console."""
    boot = settings.get("boot") or {}
    os_lines = ["<type arch='x86_64' machine='%s'>hvm</type>" % escape(settings.get("machine") or "pc")]
    if boot.get("kernel"):
        os_lines.append("<kernel>%s</kernel>" % escape(boot["kernel"]))
        if boot.get("initrd"):
            os_lines.append("<initrd>%s</initrd>" % escape(boot["initrd"]))
        os_lines.append("<cmdline>%s</cmdline>" % escape(boot.get("cmdline") or "root=/dev/vda rw console=ttyS0"))
    else:
        os_lines.append("<boot dev='hd'/>")
    console_log = ""
    if settings.get("console_log"):
        console_log = "<log file=%s append='on'/>" % quoteattr(
            posixpath.join(settings["console_log"], spec.name + ".console.log"))
    interface = ""
    if network:
        interface = "<interface type='network'><source network=%s/><model type='virtio'/></interface>" % quoteattr(network)
    return (
        "<domain type=%s>" % quoteattr(settings.get("domain_type") or "kvm")
        + "<name>%s</name><uuid>%s</uuid>" % (escape(spec.name), escape(spec.uuid))
        + "<metadata><%s:worker xmlns:%s=%s %s/></metadata>" % (
            XML_PREFIX, XML_PREFIX, quoteattr(XML_NAMESPACE), metadata_xml(spec.metadata)[len("<worker "):-2])
        + "<memory unit='MiB'>%d</memory><vcpu>%d</vcpu>" % (settings["memory_mb"], settings["vcpus"])
        + "<os>%s</os>" % "".join(os_lines)
        + "<features><acpi/><apic/></features><on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash>"
        + "<devices>"
        + "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file=%s/>"
          "<target dev='vda' bus='virtio'/></disk>" % quoteattr(overlay_path)
        + "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file=%s/>"
          "<target dev='sda' bus='sata'/><readonly/></disk>" % quoteattr(seed_path)
        + interface
        + "<serial type='pty'>%s<target port='0'/></serial>" % console_log
        + "<console type='pty'><target type='serial' port='0'/></console>"
        + "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
        + "</devices></domain>"
    )


class LibvirtProvider(Provider):

    def __init__(self, cloud: _clouds.Cloud, libraries: dict[str, Any]) -> None:
        super().__init__(cloud, libraries)
        self.libvirt = libraries.get("libvirt")
        self.conn: Any = None
        self.pool: Any = None
        self.sparse = True
        self.lock = threading.Lock()

    def connect(self) -> None:
        if self.libvirt is None:
            raise HepinfraError("libvirt-python is not installed where the module runs",
                                target="cloud %s" % self.cloud.name, hint="pip install libvirt-python")
        target = _images.LibvirtTarget(self.cloud, self.libraries)
        try:
            target.connect()
        except self.libvirt.libvirtError as exc:
            raise HepinfraError("cannot connect to %s: %s" % (self.cloud.libvirt["uri"], exc.get_error_message()),
                                target="cloud %s" % self.cloud.name) from None
        self.images = target
        self.conn, self.pool, self.sparse = target.conn, target.pool, target.sparse

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def _error(self, action: str, exc: Any) -> HepinfraError:
        return HepinfraError("%s: %s" % (action, exc.get_error_message() or exc), target="cloud %s" % self.cloud.name)

    def workers(self, group: str | None) -> list[W.Worker]:
        lv = self.libvirt
        start = W.prefix(group, self.cloud.name) if group else ""
        found = []
        self.foreign = []
        try:
            domains = self.conn.listAllDomains(0)
        except lv.libvirtError as exc:
            raise self._error("list domains", exc) from None
        for domain in domains:
            name = domain.name()
            if not name.startswith(start) or W.SEPARATOR not in name:
                continue
            try:
                text = domain.metadata(lv.VIR_DOMAIN_METADATA_ELEMENT, XML_NAMESPACE, 0)
            except lv.libvirtError:
                text = ""
            metadata = parse_metadata(text)
            if not W.owned(name, metadata, self.cloud.name):
                self.foreign.append(name)
                continue
            try:
                state, _reason = domain.state(0)
            except lv.libvirtError:
                continue                  # gone meanwhile
            cloud_state, status = self._state(state)
            found.append(W.worker_from(name, metadata, domain.UUIDString(), cloud_state, status,
                                       self._addresses(domain) if cloud_state == W.ACTIVE else []))
        return found

    def _state(self, state: int) -> tuple[str, str]:
        lv = self.libvirt
        names = {lv.VIR_DOMAIN_RUNNING: (W.ACTIVE, "running"), lv.VIR_DOMAIN_BLOCKED: (W.ACTIVE, "blocked"),
                 lv.VIR_DOMAIN_PAUSED: (W.STOPPED, "paused"), lv.VIR_DOMAIN_SHUTDOWN: (W.STOPPED, "shutting down"),
                 lv.VIR_DOMAIN_SHUTOFF: (W.STOPPED, "shut off"), lv.VIR_DOMAIN_CRASHED: (W.FAILED, "crashed"),
                 lv.VIR_DOMAIN_PMSUSPENDED: (W.STOPPED, "suspended")}
        return names.get(state, (W.BUILDING, "no state"))

    def _addresses(self, domain: Any) -> list[str]:
        try:
            interfaces = domain.interfaceAddresses(self.libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
        except self.libvirt.libvirtError:
            return []
        return [address["addr"] for interface in interfaces.values() for address in interface.get("addrs") or []]

    def prepare(self, flavor: str, image: str, network: str | None) -> dict[str, Any]:
        flavors = self.cloud.libvirt.get("flavors") or {}
        if flavor not in flavors:
            raise HepinfraError("no flavor %s (known: %s)" % (flavor, ", ".join(sorted(flavors)) or "none"),
                                target="cloud %s" % self.cloud.name,
                                hint="Define it in the cloud's libvirt.flavors")
        with self.lock:
            versions = [v for v in self.images.versions(image) if v.current]
        if not versions:
            raise HepinfraError("no image %s in pool %s" % (image, self.cloud.libvirt["pool"]),
                                target="cloud %s" % self.cloud.name, hint="Upload it with hepinfra.cloud.image")
        if self.libraries.get("pycdlib") is None:
            raise HepinfraError("pycdlib is not installed where the module runs (it writes the NoCloud seed)",
                                target="cloud %s" % self.cloud.name, hint="pip install pycdlib")
        if network:
            try:
                self.conn.networkLookupByName(network)
            except self.libvirt.libvirtError:
                raise HepinfraError("no network %s" % network, target="cloud %s" % self.cloud.name) from None
        base = versions[0]
        return {"flavor": dict(flavors[flavor]), "base": base, "network": network}

    def flavors(self) -> list[Flavor]:
        return [Flavor(name, int(size["vcpus"]), int(size["memory_mb"]), int(size.get("disk_gb") or 0))
                for name, size in sorted((self.cloud.libvirt.get("flavors") or {}).items())]

    def usage(self) -> Usage:
        """Every active domain of the hypervisor, the site's or not (virDomainGetInfo: KiB, vCPUs)."""
        try:
            domains = self.conn.listAllDomains(self.libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except self.libvirt.libvirtError as exc:
            raise self._error("list domains", exc) from None
        used = Usage()
        for domain in domains:
            try:
                _state, max_kib, _memory, vcpus, _cpu_time = domain.info()
            except self.libvirt.libvirtError:
                continue                  # gone meanwhile
            used.cores += int(vcpus)
            used.ram_mb += int(max_kib) // 1024
            used.instances += 1
        return used

    def launch(self, spec: Launch, resolved: dict[str, Any]) -> W.Worker:
        lv = self.libvirt
        base = resolved["base"]
        overlay_name, seed_name = spec.name + OVERLAY_SUFFIX, spec.name + SEED_SUFFIX
        seed = seed_iso(spec.user_data, spec.uuid, spec.name, self.libraries["pycdlib"])
        settings = dict(resolved["flavor"])
        settings.update({key: self.cloud.libvirt.get(key) for key in ("domain_type", "machine", "boot", "console_log")})
        created: list[Any] = []
        try:
            with self.lock:
                overlay = self.pool.createXML(
                    "<volume><name>%s</name><capacity unit='bytes'>%d</capacity><target><format type='qcow2'/></target>"
                    "<backingStore><path>%s</path><format type='%s'/></backingStore></volume>"
                    % (escape(overlay_name), max(base.size, int(settings.get("disk_gb") or 0) << 30),
                       escape(base.extra["path"]), escape(base.format)), 0)
                created.append(overlay)
                seed_volume = self.pool.createXML(_images.volume_xml(seed_name, len(seed), self.sparse, "raw"), 0)
                created.append(seed_volume)
            self._upload(seed_volume, seed)
            xml = domain_xml(spec, settings, overlay.path(), seed_volume.path(), resolved["network"])
            if self.cloud.libvirt.get("persistent", False):
                domain = self.conn.defineXML(xml)
                created.append(domain)
                domain.create()
            else:
                domain = self.conn.createXML(xml, 0)
        except BaseException as exc:
            # Whatever failed (libvirt, the connection, an interrupt), nothing of this worker stays.
            for thing in reversed(created):
                try:
                    if hasattr(thing, "undefine"):
                        thing.undefine()
                    else:
                        with self.lock:
                            thing.delete(0)
                except lv.libvirtError:
                    pass
            if isinstance(exc, lv.libvirtError):
                raise self._error("create %s" % spec.name, exc) from None
            raise
        return W.worker_from(spec.name, spec.metadata, domain.UUIDString(), W.ACTIVE, "running")

    def _upload(self, volume: Any, data: bytes) -> None:
        """Write data into a volume through a stream; a stream that fails is aborted."""
        stream = self.conn.newStream(0)
        try:
            volume.upload(stream, 0, len(data), 0)
            _images.stream_send(stream, data, "volume %s" % volume.name())
            stream.finish()
        except BaseException:
            try:
                stream.abort()
            except self.libvirt.libvirtError:
                pass
            raise

    def delete(self, worker: W.Worker) -> None:
        lv = self.libvirt
        try:
            domain = self.conn.lookupByName(worker.name)
        except lv.libvirtError:
            domain = None
        if domain is not None:
            # Never act on a domain that is not ours, even when the name matches.
            try:
                text = domain.metadata(lv.VIR_DOMAIN_METADATA_ELEMENT, XML_NAMESPACE, 0)
            except lv.libvirtError:
                text = ""
            if not W.owned(worker.name, parse_metadata(text), self.cloud.name):
                raise HepinfraError("domain %s is not owned by this collection; left alone" % worker.name,
                                    target="cloud %s" % self.cloud.name)
            try:
                if domain.isActive():
                    domain.destroy()
                if domain.isPersistent():
                    domain.undefineFlags(lv.VIR_DOMAIN_UNDEFINE_NVRAM if hasattr(lv, "VIR_DOMAIN_UNDEFINE_NVRAM") else 0)
            except lv.libvirtError as exc:
                if exc.get_error_code() != lv.VIR_ERR_NO_DOMAIN:
                    raise self._error("delete %s" % worker.name, exc) from None
        self.remove_leftover(worker.name)

    def remove_leftover(self, name: str) -> None:
        lv = self.libvirt
        for volume_name in (name + OVERLAY_SUFFIX, name + SEED_SUFFIX):
            with self.lock:
                try:
                    self.pool.storageVolLookupByName(volume_name).delete(0)
                except lv.libvirtError as exc:
                    if exc.get_error_code() != lv.VIR_ERR_NO_STORAGE_VOL:
                        raise self._error("delete volume %s" % volume_name, exc) from None

    def leftovers(self, group: str | None, live: set[str]) -> list[str]:
        start = W.prefix(group, self.cloud.name) if group else ""
        with self.lock:
            try:
                self.pool.refresh(0)
            except self.libvirt.libvirtError:
                pass
            volumes = list(self.pool.listVolumes())
        names = set()
        for volume in volumes:
            for suffix in (OVERLAY_SUFFIX, SEED_SUFFIX):
                if volume.endswith(suffix):
                    name = volume[:-len(suffix)]
                    parsed = W.parse_name(name)
                    if parsed and name.startswith(start) and parsed[1] == self.cloud.name.lower() and name not in live:
                        names.add(name)
        # A domain of that name that is not ours (or that appeared meanwhile) keeps its disks.
        domains = {domain.name() for domain in self.conn.listAllDomains(0)}
        # Disks changed within LEFTOVER_GRACE may belong to a launch of an overlapping run that
        # has not defined its domain yet: they are left for a later run.
        cutoff = time.time() - LEFTOVER_GRACE
        return sorted(name for name in names - domains if self._last_change(name) < cutoff)

    def _last_change(self, name: str) -> float:
        """The newest modification of a worker's disks (0 when the pool does not say)."""
        newest = 0.0
        for suffix in (OVERLAY_SUFFIX, SEED_SUFFIX):
            with self.lock:
                try:
                    text = self.pool.storageVolLookupByName(name + suffix).XMLDesc(0)
                except self.libvirt.libvirtError:
                    continue
            try:
                stamps = ElementTree.fromstring(text).find("target/timestamps")
            except ElementTree.ParseError:
                continue
            value = stamps.findtext("mtime") if stamps is not None else None
            try:
                newest = max(newest, float(value)) if value else newest
            except ValueError:
                pass
        return newest

    def mark(self, worker: W.Worker, key: str, value: str) -> None:
        lv = self.libvirt
        try:
            domain = self.conn.lookupByName(worker.name)
            text = domain.metadata(lv.VIR_DOMAIN_METADATA_ELEMENT, XML_NAMESPACE, 0)
            metadata = parse_metadata(text)
            metadata[key] = value
            flags = lv.VIR_DOMAIN_AFFECT_LIVE if domain.isActive() else 0
            if domain.isPersistent():
                flags |= lv.VIR_DOMAIN_AFFECT_CONFIG
            domain.setMetadata(lv.VIR_DOMAIN_METADATA_ELEMENT, metadata_xml(metadata), XML_PREFIX, XML_NAMESPACE, flags)
        except lv.libvirtError as exc:
            raise self._error("record %s in %s" % (key, worker.name), exc) from None


PROVIDERS = {"openstack": OpenStackProvider, "libvirt": LibvirtProvider}


def provider(cloud: _clouds.Cloud, libraries: dict[str, Any]) -> Provider:
    return PROVIDERS[cloud.type](cloud, libraries)


def wait(until: Any, timeout: float, interval: float = 2.0) -> bool:
    """Call until() every interval seconds until it is true or timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        if until():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
