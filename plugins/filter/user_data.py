# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The user_data filter: worker user-data parts rendered with a per-worker context, packed and sized."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.hepinfra.cloud.plugins.module_utils._base import HepinfraError
from ansible_collections.hepinfra.cloud.plugins.module_utils._clouds import validate_clouds
from ansible_collections.hepinfra.cloud.plugins.module_utils._userdata import OPENSTACK_LIMIT, UserDataError, build_user_data


def _boolean(name: str, value: Any) -> bool:
    try:
        return boolean(value, strict=True)
    except TypeError:
        raise AnsibleFilterError("user_data: %s must be true or false, got %r" % (name, value)) from None


def _compression(value: Any) -> bool | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return boolean(value, strict=True)
    except TypeError:
        raise AnsibleFilterError("user_data: compression must be true, false or 'auto', got %r" % (value,)) from None


def _limit(value: Any) -> Any:
    # A limit from an inventory or extra var may arrive as a string of digits.
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


def _cloud_settings(cloud: Any) -> dict[str, Any]:
    """limit, limit_after_base64 and compression from one entry of the cloud definitions."""
    if not isinstance(cloud, Mapping):
        raise AnsibleFilterError("user_data: cloud must be one cloud definition (a dict), got %s" % type(cloud).__name__)
    try:
        definition = next(iter(validate_clouds([dict(cloud)]).values()))
    except HepinfraError as exc:
        raise AnsibleFilterError("user_data: %s" % exc) from None
    settings = definition.user_data
    return {"limit": settings["max_bytes"], "limit_after_base64": settings["limit_after_base64"],
            "compression": "auto" if settings["compression"] else False}


def user_data(parts: Any, context: Mapping[str, Any] | None = None, limit: Any = None,
              limit_after_base64: Any = None, compression: Any = None, cloud: Any = None) -> dict[str, Any]:
    """{base64, compressed, sizes: {plain, gzip, final, encoded, limit}, parts: [{type, filename, bytes}], files: [{path, bytes}]}."""
    defaults = _cloud_settings(cloud) if cloud is not None else {
        "limit": OPENSTACK_LIMIT, "limit_after_base64": True, "compression": "auto"}
    limit = defaults["limit"] if limit is None else (_limit(limit) or None)  # 0: no limit
    limit_after_base64 = defaults["limit_after_base64"] if limit_after_base64 is None else limit_after_base64
    compression = defaults["compression"] if compression is None else compression
    after_base64 = _boolean("limit_after_base64", limit_after_base64)
    mode = _compression(compression)
    try:
        result = build_user_data(parts, context, limit=_limit(limit), limit_after_base64=after_base64, compression=mode)
    except UserDataError as exc:
        raise AnsibleFilterError("user_data: %s" % exc) from None
    return result.to_dict()


class FilterModule:
    def filters(self):
        return {"user_data": user_data}
