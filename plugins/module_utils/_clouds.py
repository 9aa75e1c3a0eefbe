# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cloud definition every elastic module shares.

A site describes each cloud once (usually in group_vars, as a list ``hepinfra_clouds``) and
passes that list to the modules as their ``clouds`` option; a module then takes clouds from
it by name. The option's argument spec lives here (the ``clouds`` doc fragment documents it),
so Ansible validates the structure and hides every credential (``no_log``). :func:`normalize`
adds the checks an argument spec cannot express and returns :class:`Cloud` objects;
:func:`validate_clouds` does the same for controller-side code without an AnsibleModule.

Private to this collection: the leading underscore means the API may change between releases.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.hepinfra.cloud.plugins.module_utils._base import SHARED_SPECS, HepinfraError

CLOUD_TYPES = ("openstack", "libvirt")
IMAGE_FORMATS = ("qcow2", "raw")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# OpenStack (Nova) takes 65,535 bytes of user-data after base64; libvirt guests read theirs
# from a NoCloud seed disk the module writes, so only a sanity bound applies there.
USER_DATA_DEFAULTS = {
    "openstack": {"max_bytes": 65535, "limit_after_base64": True},
    "libvirt": {"max_bytes": 1 << 20, "limit_after_base64": False},
}

AUTH_OPTIONS: dict[str, dict[str, Any]] = {
    "auth_url": {"type": "str"},
    "username": {"type": "str"},
    "user_id": {"type": "str"},
    "password": {"type": "str", "no_log": True},
    "project_name": {"type": "str"},
    "project_id": {"type": "str"},
    "user_domain_name": {"type": "str"},
    "user_domain_id": {"type": "str"},
    "project_domain_name": {"type": "str"},
    "project_domain_id": {"type": "str"},
    "application_credential_id": {"type": "str"},
    "application_credential_name": {"type": "str"},
    "application_credential_secret": {"type": "str", "no_log": True},
}

CLOUD_OPTIONS: dict[str, dict[str, Any]] = {
    "name": {"type": "str", "required": True},
    "type": {"type": "str", "required": True, "choices": list(CLOUD_TYPES)},
    "enabled": {"type": "bool", "default": True},
    "priority": {"type": "int", "default": 0},
    "openstack": {
        "type": "dict",
        "options": {
            "cloud": {"type": "str"},
            "config_file": {"type": "path"},
            "auth": {"type": "dict", "no_log": False, "options": AUTH_OPTIONS},
            "auth_type": {"type": "str"},
            "region_name": {"type": "str"},
            "interface": {"type": "str", "choices": ["public", "internal", "admin"]},
            "verify": {"type": "bool"},
            "cacert": {"type": "path"},
            "api_timeout": {"type": "int", "default": 60},
        },
    },
    "libvirt": {
        "type": "dict",
        "options": {
            "uri": {"type": "str", "required": True},
            "pool": {"type": "str", "required": True},
            "network": {"type": "str"},
            "flavors": {"type": "dict"},
            "domain_type": {"type": "str", "default": "kvm", "choices": ["kvm", "qemu"]},
            "machine": {"type": "str"},
            "boot": {
                "type": "dict",
                "options": {
                    "kernel": {"type": "str", "required": True},
                    "initrd": {"type": "str"},
                    "cmdline": {"type": "str"},
                },
            },
            "persistent": {"type": "bool", "default": False},
            "console_log": {"type": "str"},
        },
    },
    "limits": {
        "type": "dict",
        "options": {
            "cores": {"type": "int"},
            "ram_mb": {"type": "int"},
            "instances": {"type": "int"},
            "count_project_usage": {"type": "bool", "default": False},
        },
    },
    "defaults": {
        "type": "dict",
        "options": {
            "flavor": {"type": "str"},
            "image": {"type": "str"},
            "network": {"type": "str"},
            "key_name": {"type": "str", "no_log": False},
            "security_groups": {"type": "list", "elements": "str"},
        },
    },
    "user_data": {
        "type": "dict",
        "options": {
            "max_bytes": {"type": "int"},
            "limit_after_base64": {"type": "bool"},
            "compression": {"type": "bool", "default": True},
        },
    },
    "image_formats": {"type": "list", "elements": "str", "choices": list(IMAGE_FORMATS)},
    "credential_warning_days": {"type": "int", "default": 30},
}

CLOUDS_SPEC: dict[str, dict[str, Any]] = {
    "clouds": {"type": "list", "elements": "dict", "required": True, "options": CLOUD_OPTIONS},
}
SHARED_SPECS["clouds"] = CLOUDS_SPEC


@dataclass
class Cloud:
    """One validated cloud definition."""

    name: str
    type: str
    enabled: bool
    priority: int
    image_formats: list[str]
    user_data: dict[str, Any]
    limits: dict[str, Any]
    defaults: dict[str, Any]
    credential_warning_days: int
    openstack: dict[str, Any] = field(default_factory=dict)
    libvirt: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What may be shown in results: everything but credentials."""
        where: dict[str, Any]
        if self.type == "openstack":
            auth = self.openstack.get("auth") or {}
            where = {
                "cloud": self.openstack.get("cloud"),
                "auth_url": auth.get("auth_url"),
                "region_name": self.openstack.get("region_name"),
                "auth_type": auth_type(self.openstack),
            }
        else:
            where = {"uri": self.libvirt["uri"], "pool": self.libvirt["pool"]}
        return {"name": self.name, "type": self.type, "enabled": self.enabled, "priority": self.priority, **where}


def auth_type(openstack: dict[str, Any]) -> str | None:
    """The auth plugin: the one set, else v3applicationcredential when an application credential is given."""
    if openstack.get("auth_type"):
        return str(openstack["auth_type"])
    auth = openstack.get("auth") or {}
    if auth.get("application_credential_id") or auth.get("application_credential_name"):
        return "v3applicationcredential"
    return None


def _drop_none(values: dict[str, Any] | None) -> dict[str, Any]:
    return {key: value for key, value in (values or {}).items() if value is not None}


def _check_openstack(label: str, section: dict[str, Any] | None) -> list[str]:
    if not section:
        return ["%s: type openstack needs an 'openstack' section (a clouds.yaml 'cloud' name or an 'auth' dict)" % label]
    errors = []
    auth = _drop_none(section.get("auth"))
    if bool(section.get("cloud")) == bool(auth):
        errors.append("%s: openstack needs exactly one of 'cloud' (a clouds.yaml entry) and 'auth'" % label)
    if section.get("config_file") and not section.get("cloud"):
        errors.append("%s: openstack.config_file is a clouds.yaml and needs openstack.cloud" % label)
    if auth:
        if not auth.get("auth_url"):
            errors.append("%s: openstack.auth needs auth_url" % label)
        if auth_type(section) == "v3applicationcredential":
            if not auth.get("application_credential_secret"):
                errors.append("%s: an application credential needs application_credential_secret" % label)
            if auth.get("application_credential_name") and not (auth.get("username") or auth.get("user_id")):
                errors.append("%s: application_credential_name needs username or user_id (or use application_credential_id)"
                              % label)
        elif not (auth.get("password") and (auth.get("username") or auth.get("user_id"))):
            errors.append("%s: openstack.auth needs username and password, or an application credential" % label)
        else:
            if not (auth.get("project_name") or auth.get("project_id")):
                errors.append("%s: password authentication needs project_name or project_id" % label)
            if auth.get("username") and not (auth.get("user_domain_name") or auth.get("user_domain_id")):
                errors.append("%s: username needs user_domain_name or user_domain_id (often 'Default')" % label)
            if auth.get("project_name") and not (auth.get("project_domain_name") or auth.get("project_domain_id")):
                errors.append("%s: project_name needs project_domain_name or project_domain_id" % label)
    if section.get("api_timeout") is not None and section["api_timeout"] <= 0:
        errors.append("%s: openstack.api_timeout must be positive" % label)
    return errors


def _check_numbers(label: str, raw: dict[str, Any]) -> list[str]:
    errors = []
    for key, value in _drop_none(raw.get("limits")).items():
        if key != "count_project_usage" and value < 0:
            errors.append("%s: limits.%s must be 0 or more, not %s" % (label, key, value))
    max_bytes = (raw.get("user_data") or {}).get("max_bytes")
    if max_bytes is not None and max_bytes <= 0:
        errors.append("%s: user_data.max_bytes must be positive" % label)
    if raw.get("credential_warning_days", 30) < 0:
        errors.append("%s: credential_warning_days must be 0 or more" % label)
    if raw.get("image_formats") is not None and not raw["image_formats"]:
        errors.append("%s: image_formats must name at least one format" % label)
    return errors


FLAVOR_KEYS = {"vcpus": True, "memory_mb": True, "disk_gb": False}


def _check_flavors(label: str, flavors: Any) -> list[str]:
    """libvirt flavors: name -> {vcpus, memory_mb, disk_gb}, positive integers."""
    errors = []
    for name, flavor in (flavors or {}).items():
        where = "%s: libvirt.flavors.%s" % (label, name)
        if not isinstance(flavor, dict):
            errors.append("%s must be a dict with vcpus and memory_mb" % where)
            continue
        for key in sorted(set(flavor) - set(FLAVOR_KEYS)):
            errors.append("%s: unknown key %s (known: %s)" % (where, key, ", ".join(FLAVOR_KEYS)))
        for key, required in FLAVOR_KEYS.items():
            value = flavor.get(key)
            if value is None:
                if required:
                    errors.append("%s.%s is required" % (where, key))
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                errors.append("%s.%s must be a positive integer, not %r" % (where, key, value))
    return errors


def normalize(raw_clouds: list[dict[str, Any]]) -> dict[str, Cloud]:
    """Check what the argument spec cannot (sections per type, unique names, auth) and build Clouds.

    Raises HepinfraError listing every problem, each naming the cloud and the field.
    """
    errors: list[str] = []
    clouds: dict[str, Cloud] = {}
    seen: set[str] = set()
    for index, raw in enumerate(raw_clouds or []):
        name = raw.get("name")
        label = "clouds[%d] (%s)" % (index, name)
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            errors.append("%s: name must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit" % label)
            continue
        if name in seen:
            errors.append("%s: the name %s is used twice" % (label, name))
            continue
        seen.add(name)
        cloud_type = raw.get("type")
        problems = _check_numbers(label, raw)
        if cloud_type == "openstack":
            problems += _check_openstack(label, raw.get("openstack"))
            if raw.get("libvirt"):
                problems.append("%s: a libvirt section on an openstack cloud" % label)
        elif cloud_type == "libvirt":
            if not raw.get("libvirt"):
                problems.append("%s: type libvirt needs a 'libvirt' section with uri and pool" % label)
            else:
                problems += _check_flavors(label, raw["libvirt"].get("flavors"))
                console_log = raw["libvirt"].get("console_log")
                if console_log is not None and not str(console_log).startswith("/"):
                    problems.append("%s: libvirt.console_log must be an absolute directory on the hypervisor, not %r"
                                    % (label, console_log))
            if raw.get("openstack"):
                problems.append("%s: an openstack section on a libvirt cloud" % label)
        else:
            problems.append("%s: type must be one of %s" % (label, ", ".join(CLOUD_TYPES)))
        errors.extend(problems)
        if problems:
            continue
        user_data = dict(USER_DATA_DEFAULTS[cloud_type])
        user_data.update(_drop_none(raw.get("user_data")))
        user_data.setdefault("compression", True)
        openstack = dict(raw.get("openstack") or {})
        if openstack:
            openstack["auth"] = _drop_none(openstack.get("auth"))
        clouds[name] = Cloud(
            name=name,
            type=cloud_type,
            enabled=raw.get("enabled", True) is not False,
            priority=int(raw.get("priority") or 0),
            image_formats=list(raw.get("image_formats") or IMAGE_FORMATS),
            user_data=user_data,
            limits=_drop_none(raw.get("limits")),
            defaults=_drop_none(raw.get("defaults")),
            credential_warning_days=int(raw.get("credential_warning_days", 30)),
            openstack=openstack,
            libvirt=dict(raw.get("libvirt") or {}),
        )
    if errors:
        raise HepinfraError("the cloud definitions have %d problem%s: %s"
                            % (len(errors), "" if len(errors) == 1 else "s", "; ".join(errors)),
                            hint="See the 'clouds' option in the module documentation")
    return clouds


def validate_clouds(raw_clouds: Any) -> dict[str, Cloud]:
    """Validate a cloud list outside a module (filters, inventory): argument spec, then normalize()."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator  # pylint: disable=import-outside-toplevel

    validated = ArgumentSpecValidator(CLOUDS_SPEC).validate({"clouds": raw_clouds})
    if validated.error_messages:
        raise HepinfraError("the cloud definitions are invalid: %s" % "; ".join(validated.error_messages))
    return normalize(validated.validated_parameters["clouds"])


def select(clouds: dict[str, Cloud], names: list[str] | None, include_disabled: bool = False) -> list[Cloud]:
    """The clouds named (all enabled ones when names is empty), highest priority first.

    An unknown name is an error; a disabled cloud named explicitly is skipped unless include_disabled.
    """
    if names:
        unknown = [name for name in names if name not in clouds]
        if unknown:
            raise HepinfraError("no cloud named %s in the cloud definitions (known: %s)"
                                % (", ".join(unknown), ", ".join(sorted(clouds)) or "none"))
        chosen = [clouds[name] for name in dict.fromkeys(names)]
    else:
        chosen = list(clouds.values())
    if not include_disabled:
        chosen = [cloud for cloud in chosen if cloud.enabled]
    return sorted(chosen, key=lambda cloud: -cloud.priority)


# -- OpenStack ------------------------------------------------------------------------------

def openstack_connection(cloud: Cloud) -> Any:
    """An openstacksdk Connection for the cloud (the library is imported by the caller's module)."""
    from openstack import connection as os_connection  # pylint: disable=import-outside-toplevel
    from openstack.config import loader  # pylint: disable=import-outside-toplevel

    section = cloud.openstack
    options: dict[str, Any] = {}
    for key in ("region_name", "interface", "verify", "cacert", "api_timeout"):
        if section.get(key) is not None:
            options[key] = section[key]
    if section.get("cloud"):
        config = loader.OpenStackConfig(config_files=[section["config_file"]] if section.get("config_file") else None,
                                        load_envvars=False)
        region = config.get_one(cloud=section["cloud"], **options)
    else:
        config = loader.OpenStackConfig(load_yaml_config=False, load_envvars=False)
        options["auth"] = dict(section["auth"])
        if auth_type(section):
            options["auth_type"] = auth_type(section)
        region = config.get_one(**options)
    return os_connection.Connection(config=region)


def parse_time(value: Any) -> datetime.datetime | None:
    """Keystone's timestamps ('2026-12-01T10:00:00.000000', with or without zone) as aware UTC."""
    if not value:
        return None
    text = str(value).strip().replace("Z", "+00:00")
    try:
        stamp = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.timezone.utc)
    return stamp.astimezone(datetime.timezone.utc)


def credential_expiry(conn: Any) -> dict[str, Any] | None:
    """For a connection authenticated with an application credential: its id, name and expiry.

    None when the connection does not use an application credential. The credential reads
    itself (Keystone lets the owner read it, restricted or not).
    """
    access = conn.session.auth.get_access(conn.session)
    token = getattr(access, "_data", {}).get("token", {})
    credential = token.get("application_credential")
    if not credential:
        return None
    response = conn.identity.get(
        "/users/%s/application_credentials/%s" % (access.user_id, credential["id"]))
    response.raise_for_status()
    body = response.json().get("application_credential", {})
    return {"id": credential["id"], "name": credential.get("name"), "expires_at": parse_time(body.get("expires_at"))}


def expiry_warning(cloud: Cloud, expires_at: datetime.datetime | None,
                   now: datetime.datetime | None = None) -> str | None:
    """A warning when the credential expires within the cloud's credential_warning_days (or has expired)."""
    if expires_at is None:
        return None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    left = expires_at - now
    days = left.total_seconds() / 86400
    if days <= 0:
        return "cloud %s: its application credential expired at %s" % (cloud.name, expires_at.isoformat())
    if days <= cloud.credential_warning_days:
        return ("cloud %s: its application credential expires in %.1f days (%s); make a new one and update the "
                "cloud definition" % (cloud.name, days, expires_at.isoformat()))
    return None


def openstack_error(cloud: Cloud, exc: BaseException, action: str) -> HepinfraError:
    """An openstacksdk/keystoneauth exception as a message a person can act on."""
    name = type(exc).__name__
    text = str(exc).strip() or name
    hint = None
    status = (getattr(exc, "http_status", None) or getattr(exc, "status_code", None)
              or getattr(getattr(exc, "response", None), "status_code", None))
    if status == 401 or name == "Unauthorized" or "(HTTP 401)" in text:
        hint = "The credentials were refused: check the cloud's auth (an application credential may have expired)"
        text = "authentication failed (%s)" % name
    elif name in ("ConnectFailure", "ConnectTimeout", "ConnectionError", "DiscoveryFailure"):
        hint = "Check auth_url and that the cloud's API answers from this host"
    elif name == "EndpointNotFound":
        hint = "The cloud's catalog has no such endpoint in region %s" % (cloud.openstack.get("region_name") or "(default)")
    return HepinfraError("%s failed: %s" % (action, text), target="cloud %s" % cloud.name, hint=hint)
