#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: image_info
short_description: List images uploaded by hepinfra.cloud.image across clouds (the image x cloud matrix)
version_added: 0.1.0
description:
  - Lists the versions of one image name, or of every image name that M(hepinfra.cloud.image) manages, on every
    selected cloud of O(clouds), asking all clouds at once.
  - Never fails because nothing matches or because a cloud does not answer; an unreachable cloud is reported in
    RV(clouds) with its error.
author:
  - hepinfra.cloud contributors (@hepinfra)
requirements:
  - openstacksdk (for OpenStack clouds)
  - libvirt-python (for libvirt clouds)
extends_documentation_fragment:
  - hepinfra.cloud.clouds
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is no diff.
options:
  name:
    description:
      - The image name. Every managed image name when left out.
    type: str
  targets:
    description:
      - Names of the clouds in O(clouds) to ask. Default every enabled cloud.
    type: list
    elements: str
  include_disabled:
    description:
      - Also ask disabled clouds.
    type: bool
    default: false
  check_use:
    description:
      - Also find out, for every version, whether an instance uses it (one more query per version on OpenStack).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Where is which version of the worker image?
  hepinfra.cloud.image_info:
    clouds: "{{ hepinfra_clouds }}"
    name: worker-el9
  register: images

- name: Clouds where the image is missing
  ansible.builtin.debug:
    msg: "{{ images.matrix['worker-el9'] | dict2items | selectattr('value', 'none') | map(attribute='key') | list }}"
"""

RETURN = r"""
images:
  description:
    - Per image name, per cloud, the versions found (newest first). With O(name), that name is always a key.
  returned: always
  type: dict
  sample:
    worker-el9:
      cern-prod:
        - id: 0b1f4f64-0c59-4c05-b1b2-6a3a3c1f2f10
          name: worker-el9
          version: 20261128T120000Z
          sha256: 5f0c...
          format: qcow2
          size: 1073741824
          current: true
          complete: true
          in_use: null
          protected: false
matrix:
  description:
    - Per image name, per cloud, the current version's C(version) and C(sha256), or null where the cloud has none
      (or did not answer). With O(name), that name is always a key.
  returned: always
  type: dict
  sample:
    worker-el9:
      cern-prod: {version: 20261128T120000Z, sha256: 5f0c...}
      hv-pool-a: null
clouds:
  description: Per cloud, whether it answered.
  returned: always
  type: dict
  sample:
    cern-prod: {ok: true, error: null, warnings: []}
    hv-pool-a: {ok: false, error: "cloud hv-pool-a: connecting failed: ...", warnings: []}
"""

from ansible_collections.hepinfra.cloud.plugins.module_utils import _clouds, _image_task  # noqa: F401 (registers the clouds spec)
from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraModule, optional_import


class ImageInfoModule(HepinfraModule):
    argument_spec = dict(
        name=dict(type="str"),
        targets=dict(type="list", elements="str"),
        include_disabled=dict(type="bool", default=False),
        check_use=dict(type="bool", default=False),
    )
    shared_specs = ("clouds",)

    def run(self) -> dict:
        params = self.params
        clouds = _clouds.select(_clouds.normalize(params["clouds"]), params["targets"], params["include_disabled"])
        libraries = {"openstack": optional_import("openstack")[0], "libvirt": optional_import("libvirt")[0]}
        runs = _image_task.connect_all(clouds, libraries)
        found: dict[str, dict[str, list]] = {}

        def collect(run: _image_task.CloudRun) -> None:
            names = [params["name"]] if params["name"] else run.target.names()
            for name in names:
                versions = run.target.versions(name)
                if params["check_use"]:
                    run.target.mark_use(versions)
                run.versions.extend(versions)
                if versions:
                    versions.sort(key=lambda v: v.version, reverse=True)
                    found.setdefault(name, {})[run.cloud.name] = [v.describe() for v in versions]

        collect.action = "listing images"  # type: ignore[attr-defined]
        try:
            _image_task.parallel([run for run in runs if run.error is None], collect)
        finally:
            _image_task.close_all(runs)
        if params["name"]:
            found.setdefault(params["name"], {})
        matrix: dict[str, dict] = {}
        for name, per_cloud in found.items():
            matrix[name] = {}
            for run in runs:
                current = next((v for v in per_cloud.get(run.cloud.name, []) if v["current"] and v["complete"]), None)
                matrix[name][run.cloud.name] = {"version": current["version"], "sha256": current["sha256"]} if current else None
        report = {}
        for run in runs:
            warnings = list(run.target.warnings) if run.target else []
            for warning in warnings:
                self.module.warn(warning)
            report[run.cloud.name] = {"ok": run.error is None, "error": run.error, "warnings": warnings}
        return self.result(False, images=found, matrix=matrix, clouds=report)


def main() -> None:
    ImageInfoModule().execute()


if __name__ == "__main__":
    main()
