#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: image
short_description: Put one VM image on many clouds (OpenStack Glance and libvirt storage pools) at once
version_added: 0.1.0
description:
  - Uploads one qcow2 or raw image file to every selected cloud of O(clouds) in one task, concurrently, reading the
    file once for all of them (plus one read to hash it first, skipped when O(checksum_cache) knows the file).
  - "Checksum-idempotent: a cloud that already has the same content (SHA-256 of the source) as the current version
    of O(name) gets nothing uploaded. Content that an older kept version has is made current again without
    uploading it (Glance: renamed back; libvirt: cloned inside the pool)."
  - "Versions: in Glance the current version carries O(name) and older ones are renamed C(<name>-<version>); every
    version carries the properties C(hepinfra_image), C(hepinfra_version), C(hepinfra_sha256) and
    C(hepinfra_source_format). In a libvirt pool every version is a volume C(<name>-<version>-<sha256[:12]>.<format>)
    and the newest is current. A version is the UTC time of its upload, for example C(20261128T120000Z)."
  - Properties, visibility, tags, minimum disk and RAM and protection of the current Glance version are updated in
    place. They do not apply to libvirt pools.
  - "Retention keeps the newest O(keep) versions of O(name) and deletes older ones that no instance uses
    (Glance: no server of the project was booted from it; libvirt: no domain's disk and no volume's backing chain
    refers to it). Interrupted uploads are removed."
  - An image in a format a cloud does not take (see O(clouds[].image_formats)) is converted with C(qemu-img), once
    per format for all clouds that need it.
  - A failure on one cloud does not stop the others; the task fails at the end naming each failed cloud, and
    RV(clouds) reports every cloud.
  - Run one task per image name at a time (a run deletes the interrupted uploads of another run of the same name).
author:
  - hepinfra.cloud contributors (@hepinfra)
requirements:
  - openstacksdk (for OpenStack clouds)
  - libvirt-python (for libvirt clouds)
  - qemu-img (qemu-utils) on the host the module runs on
extends_documentation_fragment:
  - hepinfra.cloud.clouds
attributes:
  check_mode:
    support: full
    description: Connects and reports what would be uploaded, updated and deleted, changing nothing.
  diff_mode:
    support: full
    description: Shows each cloud's current version and metadata before and after.
options:
  name:
    description:
      - The image name.
    type: str
    required: true
  src:
    description:
      - The image file on the host the module runs on (qcow2 or raw, without a backing file). Needed for
        O(state=present).
    type: path
  disk_format:
    description:
      - The format of O(src). Detected with C(qemu-img info) when left out; when given it must match.
    type: str
    choices: [qcow2, raw]
  state:
    description:
      - V(present) makes the image current on every selected cloud; V(absent) deletes every version no instance
        uses (versions in use are kept and listed per cloud in RV(clouds.kept_in_use)).
    type: str
    choices: [present, absent]
    default: present
  targets:
    description:
      - Names of the clouds in O(clouds) to work on. Default every enabled cloud.
    type: list
    elements: str
  properties:
    description:
      - Glance properties of the image (values become strings). Properties not named here are left alone, and a
        new version takes over the properties, visibility, tags and minimums of the version it replaces.
      - Glance's own fields (name, visibility, protected, ...) and C(hepinfra_*) are refused here.
    type: dict
    default: {}
  visibility:
    description:
      - Glance visibility. Left as Glance sets it when not given.
    type: str
    choices: [private, shared, community, public]
  tags:
    description:
      - Glance tags; when given, the current version has exactly these.
    type: list
    elements: str
  min_disk:
    description: Glance's minimum disk size in GiB.
    type: int
  min_ram:
    description: Glance's minimum RAM in MiB.
    type: int
  protected:
    description: Glance's protection flag of the current version (a protected image is never deleted).
    type: bool
  keep:
    description:
      - How many versions of O(name) to keep on each cloud, the current one included.
    type: int
    default: 3
  checksum_cache:
    description:
      - A file on the host the module runs on that keeps the SHA-256 of each source by path, size, modification
        and change time and inode, so an unchanged source is not read again to be hashed. Any write to the
        source changes its change time, which the user cannot set back. An empty string hashes every time.
    type: path
    default: ~/.cache/hepinfra-cloud/image-checksums.json
  stall_timeout:
    description:
      - Seconds an upload may take no data before it is dropped and its cloud reported failed (the other
        uploads go on). One stuck inside a client call is abandoned after twice this.
    type: int
    default: 300
  work_dir:
    description:
      - Where conversions are written (the system's temporary directory by default). Needs room for the image
        in the converted format.
    type: path
"""

EXAMPLES = r"""
- name: Put the worker image on every enabled cloud
  hepinfra.cloud.image:
    clouds: "{{ hepinfra_clouds }}"
    name: worker-el9
    src: /srv/images/worker-el9.qcow2
    properties:
      os_distro: almalinux
      hw_disk_bus: virtio
    tags: [hepinfra-worker]
    keep: 3

- name: Only two clouds, without touching the others
  hepinfra.cloud.image:
    clouds: "{{ hepinfra_clouds }}"
    targets: [cern-prod, hv-pool-a]
    name: worker-el9
    src: /srv/images/worker-el9.qcow2

- name: Retire an image everywhere (versions still in use stay)
  hepinfra.cloud.image:
    clouds: "{{ hepinfra_clouds }}"
    name: worker-el8
    state: absent
"""

RETURN = r"""
image:
  description: The source as hashed.
  returned: state is present
  type: dict
  contains:
    sha256:
      description: SHA-256 of O(src).
      type: str
    format:
      description: The format of O(src).
      type: str
    size:
      description: Bytes in O(src).
      type: int
    virtual_size:
      description: The disk size the image gives a guest.
      type: int
    checksum_cached:
      description: Whether the SHA-256 came from O(checksum_cache) (the source was not read to hash it).
      type: bool
clouds:
  description: Per cloud (by name), what happened.
  returned: always
  type: dict
  contains:
    cloud:
      description: The cloud's name.
      type: str
    type:
      description: The cloud's type.
      type: str
    changed:
      description: Whether anything changed on this cloud.
      type: bool
    failed:
      description: Whether this cloud failed.
      type: bool
    error:
      description: What failed, or null.
      type: str
    action:
      description: V(none), V(upload), V(restore) (an older version made current without upload) or V(delete).
      type: str
    version:
      description: The current version after the task (null in check mode when a new one would be made).
      type: str
    previous_version:
      description: The version that was current before, when another one is current now.
      type: str
    id:
      description: The Glance image id or libvirt volume name of the current version.
      type: str
    format:
      description: The format stored on this cloud.
      type: str
    converted_from:
      description: The source format when the upload was converted, else null.
      type: str
    bytes_sent:
      description: Image bytes sent to this cloud (zeros in raw images are sent as holes to libvirt).
      type: int
    updated:
      description: Metadata fields updated in place.
      type: list
      elements: str
    deleted:
      description: Versions deleted (by retention, interrupted uploads, or O(state=absent)).
      type: list
      elements: str
    kept_in_use:
      description: Old versions retention or O(state=absent) kept because an instance uses them.
      type: list
      elements: str
    warnings:
      description: Warnings about this cloud (for example an application credential close to expiry).
      type: list
      elements: str
    duration:
      description: Seconds spent on this cloud.
      type: float
  sample:
    cern-prod:
      cloud: cern-prod
      type: openstack
      changed: true
      failed: false
      error: null
      action: upload
      version: 20261128T120000Z
      id: 0b1f4f64-0c59-4c05-b1b2-6a3a3c1f2f10
      format: raw
      converted_from: qcow2
      bytes_sent: 1073741824
      updated: []
      deleted: [worker-el9-20261001T080000Z]
      kept_in_use: []
      warnings: []
      duration: 41.2
"""

from ansible_collections.hepinfra.cloud.plugins.module_utils import _clouds, _image_task, _images  # noqa: F401 (registers the clouds spec)
from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError, HepinfraModule, optional_import


class ImageModule(HepinfraModule):
    argument_spec = dict(
        name=dict(type="str", required=True),
        src=dict(type="path"),
        disk_format=dict(type="str", choices=["qcow2", "raw"]),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        targets=dict(type="list", elements="str"),
        properties=dict(type="dict", default={}),
        visibility=dict(type="str", choices=["private", "shared", "community", "public"]),
        tags=dict(type="list", elements="str"),
        min_disk=dict(type="int"),
        min_ram=dict(type="int"),
        protected=dict(type="bool"),
        keep=dict(type="int", default=3),
        work_dir=dict(type="path"),
        checksum_cache=dict(type="path", default="~/.cache/hepinfra-cloud/image-checksums.json"),
        stall_timeout=dict(type="int", default=300),
    )
    shared_specs = ("clouds",)
    module_kwargs = dict(required_if=[("state", "present", ("src",))])

    def run(self) -> dict:
        params = self.params
        name = params["name"]
        if not name or "/" in name or len(name) > 200:
            raise HepinfraError("name must be 1-200 characters without '/'")
        if params["keep"] < 1:
            raise HepinfraError("keep must be 1 or more (the current version always stays)")
        if params["stall_timeout"] < 1:
            raise HepinfraError("stall_timeout must be 1 or more seconds")
        reserved = sorted(key for key in params["properties"] or {}
                          if key.startswith("hepinfra_") or key in _images.GLANCE_CORE)
        if reserved:
            raise HepinfraError("properties may not set %s" % ", ".join(reserved),
                                hint="hepinfra_* are the module's own; use the visibility, tags, min_disk, min_ram and "
                                     "protected options for those")
        clouds = _clouds.select(_clouds.normalize(params["clouds"]), params["targets"])
        if not clouds:
            raise HepinfraError("no enabled cloud to work on", hint="Check targets and the clouds' enabled flags")
        desired = _images.Desired(
            name=name, state=params["state"], keep=params["keep"], properties=params["properties"] or {},
            visibility=params["visibility"], tags=params["tags"], min_disk=params["min_disk"], min_ram=params["min_ram"],
            protected=params["protected"])
        libraries = {"openstack": optional_import("openstack")[0], "libvirt": optional_import("libvirt")[0]}
        source = None
        cached = False
        if desired.state == "present":
            source = _images.inspect_source(params["src"], params["disk_format"])
            source.sha256, cached = _images.cached_sha256(source.path, params["checksum_cache"] or None,
                                                          write=not self.check_mode)
            source.signature = _images.signature(source.path)
        runs = _image_task.connect_all(clouds, libraries)
        try:
            if source is not None:
                _image_task.plan_present(runs, source, desired)
            else:
                _image_task.plan_absent(runs, desired)
            before = {run.cloud.name: self._before(run, source) for run in runs}
            if not self.check_mode:
                if source is not None:
                    _image_task.apply_present(runs, source, desired, params["work_dir"], params["stall_timeout"])
                else:
                    _image_task.apply_absent(runs)
        finally:
            _image_task.close_all(runs)
        reports = {run.cloud.name: run.report(source.format if source else None) for run in runs}
        after = {run.cloud.name: self._after(run, source) for run in runs}
        for report in reports.values():
            for warning in report["warnings"]:
                self.module.warn(warning)
        changed = any(report["changed"] for report in reports.values())
        result = self.result(changed, before=before, after=after, clouds=reports)
        if source is not None:
            result["image"] = {"sha256": source.sha256, "format": source.format, "size": source.size,
                               "virtual_size": source.virtual_size, "checksum_cached": cached}
        failed = [report for report in reports.values() if report["failed"]]
        if failed:
            summary = "; ".join(report["error"] for report in failed)
            self.fail("image %s failed on %d of %d clouds: %s" % (name, len(failed), len(reports), summary),
                      **{k: v for k, v in result.items() if k != "changed"}, changed=changed)
        return result

    @staticmethod
    def _before(run, source) -> dict:
        if run.error is not None:
            return {"error": run.error}
        if source is None:
            return {"versions": sorted(v.name for v in run.versions)}
        if run.current is None:
            return {"current": None}
        state = {"current": run.current.version, "sha256": run.current.sha256}
        for key, (old, _new) in run.metadata.items():
            state[key] = old
        return state

    @staticmethod
    def _after(run, source) -> dict:
        if run.error is not None:
            return {"error": run.error}
        deleted = {v.ref for v in (run.deleted if run.applied else run.delete)}
        if source is None:
            return {"versions": sorted(v.name for v in run.versions if v.ref not in deleted)}
        if run.action in ("upload", "restore"):
            state = {"current": run.new.version if run.new else "(a new version)", "sha256": source.sha256}
        elif run.current is not None:
            state = {"current": run.current.version, "sha256": run.current.sha256}
        else:
            state = {"current": None}
        for key, (_old, new) in run.metadata.items():
            state[key] = new
        if deleted:
            state["deleted"] = sorted(v.name for v in run.versions if v.ref in deleted)
        return state


def main() -> None:
    ImageModule().execute()


if __name__ == "__main__":
    main()
