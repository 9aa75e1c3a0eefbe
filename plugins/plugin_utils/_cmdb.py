# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fetch and transform for the hepinfra.cloud.cmdb inventory plugin.

Controller-side only (plugin_utils, Python 3.11+). Three separate steps, so that the
transform can be tested on recorded API responses without a CMDB:

* fetch: :class:`CmdbClient` reads whole listings with as few requests as the API allows
  (NetBox: one listing per object type, large pages fetched in parallel, only the fields
  the inventory uses). The result is plain JSON data, which is what the cache stores.
* transform: :func:`netbox_hosts` and :func:`rest_hosts` turn those records into
  :class:`HostEntry` objects (name, variables, groups): pure functions over plain data.
* populate: the plugin adds the entries to the inventory and applies compose/groups/
  keyed_groups.

Private to this collection: the leading underscore means the API may change.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable
from urllib.parse import urljoin, urlsplit, urlunsplit

try:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry
except ImportError:  # reported by the plugin when it is used
    requests = None  # type: ignore[assignment]

try:
    import jmespath
except ImportError:  # only the generic REST backend needs it
    jmespath = None  # type: ignore[assignment]

CACHE_FORMAT = 2

# Object types of the NetBox backend: API path, the fields the inventory reads.
NETBOX_KINDS: dict[str, dict[str, Any]] = {
    "devices": {
        "kind": "device",
        "path": "api/dcim/devices/",
        "fields": [
            "id", "name", "site", "location", "rack", "role", "platform", "tenant", "tags",
            "status", "cluster", "device_type", "primary_ip4", "primary_ip6", "custom_fields",
        ],
    },
    "virtual_machines": {
        "kind": "virtual_machine",
        "path": "api/virtualization/virtual-machines/",
        "fields": [
            "id", "name", "site", "role", "platform", "tenant", "tags", "status", "cluster",
            "vcpus", "memory", "disk", "primary_ip4", "primary_ip6", "custom_fields",
        ],
    },
}

# group_by keys and how each reads its value(s) from a NetBox record.
NETBOX_GROUP_BY = (
    "kind", "site", "location", "rack", "role", "platform", "tenant", "tag", "status",
    "cluster", "device_type", "manufacturer",
)

_UNSAFE_GROUP_CHARS = re.compile(r"[^A-Za-z0-9_]")


class CmdbError(Exception):
    """The CMDB could not be read: the message names the endpoint and never holds a secret."""


class CmdbForbidden(CmdbError):
    """The token is valid but may not read one object type."""


@dataclass
class HostEntry:
    """One inventory host as the transform produces it."""

    name: str
    variables: dict[str, Any] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)


@dataclass
class NetBoxSettings:
    """What the NetBox transform needs from the plugin options."""

    prefix: str = "cmdb_"
    group_by: list[str] = field(default_factory=lambda: ["site", "role", "tag", "status"])
    group_names: dict[str, str] = field(default_factory=dict)
    ansible_host: str = "primary_ip"
    ip_preference: str = "ipv4"
    ansible_host_custom_field: str | None = None
    config_context: bool = False
    extra_fields: list[str] = field(default_factory=list)
    host_variables: list[str] | None = None
    # thousands of hosts share a few dozen groups: each name is formatted once
    group_name_cache: dict[tuple[str, str], str] = field(default_factory=dict, repr=False, compare=False)


# -- helpers --------------------------------------------------------------------------------


def safe_group_name(name: str) -> str:
    """A group name Ansible accepts without warnings: letters, digits and underscores."""
    safe = _UNSAFE_GROUP_CHARS.sub("_", name)
    if safe and safe[0].isdigit():
        safe = "_" + safe
    return safe


def simplify(value: Any) -> Any:
    """A nested NetBox object reduced to what a playbook compares against.

    Choice fields ({value, label}) give their value; objects with a slug give the slug,
    others their name, IP addresses their address; lists are simplified item by item.
    """
    if isinstance(value, list):
        return [simplify(item) for item in value]
    if isinstance(value, dict):
        if set(value) == {"value", "label"}:  # a choice
            return value["value"]
        if "id" in value and "url" in value:  # a NetBox object; a JSON custom field stays as it is
            for key in ("slug", "name", "address", "model"):
                if value.get(key) is not None:
                    return value[key]
            return value.get("display")
    return value


def strip_prefix_length(address: str | None) -> str | None:
    """'192.0.2.10/24' -> '192.0.2.10'."""
    if not address:
        return None
    return address.split("/", 1)[0]


def cache_key(plugin_name: str, settings: dict[str, Any]) -> str:
    """A cache key from everything that changes what is fetched (never the token).

    Two inventory sources with another URL, backend, object type, filter or field list get
    different keys, whatever their file names are; the same source read from another path
    shares its cache.
    """
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    return "%s_%s" % (plugin_name.replace(".", "_"), digest[:32])


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """The text with every secret replaced (as given, and as repr() or JSON would show it)."""
    for secret in secrets:
        if not secret:
            continue
        for form in sorted({secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}, key=len, reverse=True):
            if len(form) >= 4:
                text = text.replace(form, "********")
    return text


def public_url(url: str) -> str:
    """A URL fit for a message: no user name or password, no query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = "[%s]" % host
    netloc = host + (":%d" % parts.port if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_token(token: str | None) -> str | None:
    """A token as pasted (surrounding blanks dropped); refused if it holds control characters."""
    if token is None:
        return None
    token = token.strip()
    if any(ord(char) < 32 or ord(char) == 127 for char in token):
        raise CmdbError("the token contains control characters or line breaks; paste it again")
    return token or None


# -- fetch ----------------------------------------------------------------------------------


class CmdbClient:
    """Reads JSON listings from a CMDB over one HTTP session, pages in parallel.

    ``auth_header``/``auth_value`` are sent with every request; they never appear in an
    exception message.
    """

    def __init__(
        self,
        base_url: str,
        auth_header: str | None = None,
        auth_value: str | None = None,
        validate_certs: bool | str = True,
        timeout: float = 60,
        max_workers: int = 4,
        headers: dict[str, str] | None = None,
    ) -> None:
        if requests is None:
            raise CmdbError("the Python library 'requests' is required on the controller")
        self.rest_url = base_url  # the generic backend reads this URL as given
        self.base_url = base_url.rstrip("/") + "/"
        self.origin = urlsplit(base_url)[:2]  # (scheme, netloc): the only place credentials go
        self.timeout = timeout
        self.verify = validate_certs
        self.max_workers = max(1, int(max_workers))
        self.requests_made = 0
        self._count_lock = threading.Lock()
        self._secret = auth_value
        self.session = requests.Session()
        # a busy CMDB answering 429/502/503/504 gets a few retries with backoff
        retry = Retry(total=3, connect=0, read=0, backoff_factor=0.5, status_forcelist=(429, 502, 503, 504),
                      allowed_methods=frozenset({"GET"}), raise_on_status=False, respect_retry_after_header=True)
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=self.max_workers + 2, max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["Accept"] = "application/json"
        self.session.headers.update(headers or {})
        if auth_header and auth_value:
            self.session.headers[auth_header] = auth_value

    def url(self, path: str) -> str:
        return urljoin(self.base_url, path)

    def get_json(self, url: str, params: dict[str, Any] | list[tuple[str, Any]] | None = None) -> tuple[Any, Any]:
        """GET one page: (decoded JSON, response). Errors name the endpoint, not the token.

        Credentials only ever go to the scheme and host of the configured URL: redirects are
        not followed and links elsewhere are refused.
        """
        endpoint = public_url(url)
        if urlsplit(url)[:2] != self.origin:
            raise CmdbError("%s points away from the configured CMDB %s; the token is only sent there" % (endpoint, public_url(self.rest_url)))
        try:
            # verify per request: a session-wide setting loses to REQUESTS_CA_BUNDLE in the environment
            response = self.session.get(url, params=params, timeout=self.timeout, verify=self.verify, allow_redirects=False)
        except requests.exceptions.SSLError as exc:
            raise CmdbError("TLS verification failed for %s (%s); set ca_path or validate_certs" % (endpoint, self._short(exc))) from None
        except requests.exceptions.Timeout:
            raise CmdbError("no answer from %s within %s s" % (endpoint, self.timeout)) from None
        except (requests.exceptions.RequestException, OSError, ValueError) as exc:
            raise CmdbError("cannot reach the CMDB at %s: %s" % (endpoint, self._short(exc))) from None
        finally:
            with self._count_lock:
                self.requests_made += 1
        if 300 <= response.status_code < 400:
            target = public_url(urljoin(url, response.headers.get("Location", "")))
            raise CmdbError("%s redirects (HTTP %d) to %s; set the URL to where it redirects" % (endpoint, response.status_code, target))
        if response.status_code in (401, 403):
            detail = self._detail(response)
            if response.status_code == 401 or "token" in detail.lower() or "credentials" in detail.lower():
                raise CmdbError(
                    "the CMDB at %s rejected the credentials (HTTP %d: %s); check the token"
                    % (endpoint, response.status_code, detail)
                )
            raise CmdbForbidden("HTTP %d from %s: %s" % (response.status_code, endpoint, detail))
        if response.status_code >= 400:
            raise CmdbError("HTTP %d from %s: %s" % (response.status_code, endpoint, self._detail(response)))
        try:
            return response.json(), response
        except ValueError:
            raise CmdbError("%s did not answer with JSON (content type %s)" % (endpoint, response.headers.get("Content-Type"))) from None

    def _detail(self, response: Any) -> str:
        try:
            body = response.json()
            text = body.get("detail") if isinstance(body, dict) and body.get("detail") else json.dumps(body)
        except ValueError:
            text = response.text
        return redact(" ".join(str(text).split())[:300], [self._secret])

    def _short(self, exc: Exception) -> str:
        text = str(exc)
        reason = re.search(r"\[Errno -?\d+\] ([^')\]]+)", text)
        if reason:
            text = reason.group(1)
        elif "Failed to resolve" in text or "Name or service not known" in text:
            text = "host name not resolved"
        return redact(text[:300], [self._secret])

    def pages_by_offset(
        self,
        url: str,
        params: dict[str, Any],
        page_size: int,
        records_of: Callable[[Any], list[Any]],
        total_of: Callable[[Any], int | None],
        offset_param: str = "offset",
        limit_param: str = "limit",
    ) -> list[Any]:
        """All records of an offset-paginated listing.

        The first page says the total; the others are fetched concurrently. Without a total,
        pages are read one after the other until a short page.
        """
        first = self.get_json(url, {**params, limit_param: page_size, offset_param: 0})[0]
        records = list(records_of(first))
        total = total_of(first)
        if not records:
            return records
        # The server may cap the page size (NetBox MAX_PAGE_SIZE): step by what it returned.
        step = len(records)
        if total is None:
            offset = step
            previous = records
            while True:
                page = self.get_json(url, {**params, limit_param: page_size, offset_param: offset})[0]
                batch = list(records_of(page))
                if batch and batch == previous:
                    raise CmdbError("%s answers every offset with the same page; check rest_offset_param/rest_limit_param" % public_url(url))
                records.extend(batch)
                if len(batch) < step or not batch:
                    return records
                offset += len(batch)
                previous = batch
        offsets = list(range(step, int(total), step))

        def fetch(offset: int) -> list[Any]:
            page = self.get_json(url, {**params, limit_param: page_size, offset_param: offset})[0]
            return list(records_of(page))

        if offsets:
            with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
                for batch in pool.map(fetch, offsets):
                    records.extend(batch)
        return records

    def pages_by_link(self, url: str, params: dict[str, Any], records_of: Callable[[Any], list[Any]], next_of: Callable[[Any, Any], str | None]) -> list[Any]:
        """All records of a listing whose pages link to the next one (body or Link header)."""
        records: list[Any] = []
        seen: set[str] = set()
        page_url: str | None = url
        page_params: dict[str, Any] | None = params
        while page_url:
            if page_url in seen:
                raise CmdbError("%s links back to a page already read (%s)" % (public_url(url), public_url(page_url)))
            seen.add(page_url)
            body, response = self.get_json(page_url, page_params)
            records.extend(records_of(body))
            following = next_of(body, response)
            page_url = urljoin(response.url, following) if following else None
            page_params = None  # the next link carries the query
        return records


def netbox_token_header(token: str) -> str:
    """NetBox v2 tokens ('nbt_<key>.<secret>') are Bearer tokens; v1 tokens use 'Token'."""
    if token.startswith(("Token ", "Bearer ")):
        return token
    return ("Bearer %s" if token.startswith("nbt_") else "Token %s") % token


def query_params(filters: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """NetBox query filters as request parameters: a list value repeats the parameter (OR)."""
    params: list[tuple[str, Any]] = []
    for key, value in sorted((filters or {}).items()):
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, bool):
                item = "true" if item else "false"
            params.append((key, item))
    return params


# The NetBox field each variable or group_by key reads, where the names differ.
_FIELD_OF = {"kind": None, "tag": "tags", "manufacturer": "device_type"}


def netbox_fields(kind: str, settings: NetBoxSettings) -> list[str]:
    """The fields to ask NetBox for: only what the variables, groups and ansible_host read.

    Every nested object costs NetBox time to render (tags most of all), so a narrow
    host_variables list also makes the listing itself faster.
    """
    available = NETBOX_KINDS[kind]["fields"]
    if settings.host_variables is None:
        wanted = set(available)
    else:
        wanted = {"id", "name"} | {_FIELD_OF.get(name, name) for name in settings.host_variables}
        for key in settings.group_by:
            wanted.add("custom_fields" if key.startswith("custom_field:") else _FIELD_OF.get(key, key))
        if settings.ansible_host in ("primary_ip", "dns_name"):
            wanted |= {"primary_ip4", "primary_ip6"}
        elif settings.ansible_host == "custom_field":
            wanted.add("custom_fields")
    fields = [name for name in available if name in wanted]
    if settings.config_context:
        fields.append("config_context")
    for name in settings.extra_fields:
        if name not in fields:
            fields.append(name)
    return fields


def fetch_netbox(
    client: CmdbClient,
    kinds: dict[str, dict[str, Any]],
    settings: NetBoxSettings,
    page_size: int,
    warn: Callable[[str], None],
) -> dict[str, Any]:
    """Read the selected NetBox object types: {'records': {kind: [...]}, 'forbidden': [...]}.

    ``kinds`` maps 'devices'/'virtual_machines' to their query filters. A type the token may
    not read is skipped with a warning; if no selected type can be read, that is an error.
    """
    records: dict[str, list[dict[str, Any]]] = {}
    forbidden: list[str] = []
    errors: list[CmdbError] = []

    def read(kind: str) -> tuple[str, list[dict[str, Any]] | Exception]:
        url = client.url(NETBOX_KINDS[kind]["path"])
        base = query_params(kinds[kind])
        base.append(("fields", ",".join(netbox_fields(kind, settings))))
        if not settings.config_context:
            base.append(("exclude", "config_context"))
        try:
            return kind, netbox_listing(client, url, base, page_size)
        except CmdbError as exc:
            return kind, exc

    # one object type after the other: each already keeps max_workers requests in flight
    for kind, outcome in [read(kind) for kind in sorted(kinds)]:
        if isinstance(outcome, CmdbForbidden):
            forbidden.append(kind)
            warn("the CMDB token may not read %s (%s); the inventory holds the other object types only" % (kind.replace("_", " "), outcome))
        elif isinstance(outcome, CmdbError):
            errors.append(outcome)
        else:
            # a record that moved between pages while they were read would come twice
            unique = {record.get("id"): record for record in outcome}
            records[kind] = [slim_netbox_record(record) for record in unique.values()]
    if errors:
        raise errors[0]
    if kinds and not records:
        raise CmdbError("the token may not read any selected object type (%s)" % ", ".join(forbidden))
    return {"format": CACHE_FORMAT, "records": records, "forbidden": forbidden}


def netbox_listing(client: CmdbClient, url: str, params: list[tuple[str, Any]], page_size: int) -> list[dict[str, Any]]:
    """One NetBox listing, all pages: the first gives the count, the rest run in parallel."""
    repeated: dict[str, Any] = {}
    for key, value in params:
        repeated.setdefault(key, []).append(value)
    plain = {key: values if len(values) > 1 else values[0] for key, values in repeated.items()}

    def records_of(body: Any) -> list[Any]:
        if not isinstance(body, dict) or not isinstance(body.get("results"), list):
            raise CmdbError("%s did not answer with a NetBox listing (no 'results'); is the URL the NetBox base URL?" % public_url(url))
        return body["results"]

    return client.pages_by_offset(url, plain, page_size, records_of, lambda body: body.get("count"))


# -- transform: NetBox ----------------------------------------------------------------------


def _ip(value: Any) -> dict[str, Any] | None:
    if not value:
        return None
    return {"address": strip_prefix_length(value.get("address")), "dns_name": value.get("dns_name") or None}


def slim_netbox_record(record: dict[str, Any]) -> dict[str, Any]:
    """A NetBox record reduced to what the inventory reads: nested objects become their slug,
    name or value, addresses lose their prefix length.

    This is what the cache keeps: a fraction of the API's size, so a cached inventory of
    thousands of hosts loads quickly.
    """
    slim: dict[str, Any] = {}
    for key, value in record.items():
        if key in ("primary_ip4", "primary_ip6"):
            slim[key] = _ip(value)
        elif key == "device_type":
            slim[key] = value.get("slug") if value else None
            slim["manufacturer"] = simplify(value.get("manufacturer")) if value else None
        elif key == "custom_fields":
            slim[key] = {name: simplify(item) for name, item in (value or {}).items()}
        elif key == "config_context":
            slim[key] = value or {}
        elif key == "tags":
            slim[key] = _slugs(value)
        else:
            slim[key] = simplify(value)
    return slim


def _slugs(value: Any) -> list[str]:
    if value is None:
        return []
    simple = simplify(value)
    if isinstance(simple, list):
        return [str(item) for item in simple if item is not None and item != ""]
    if simple is None or simple == "":
        return []
    return [str(simple).lower() if isinstance(simple, bool) else str(simple)]


def netbox_group_values(record: dict[str, Any], kind: str, key: str) -> list[str]:
    """The value(s) a slim record has for one group_by key (a custom field is 'custom_field:<name>')."""
    if key.startswith("custom_field:"):
        return _slugs((record.get("custom_fields") or {}).get(key.split(":", 1)[1]))
    if key == "kind":
        return [NETBOX_KINDS[kind]["kind"]]
    if key == "tag":
        return record.get("tags") or []
    return _slugs(record.get(key))


def netbox_group_name(key: str, value: str, group_names: dict[str, str]) -> str:
    """The group for one value: group_names[key] is a format with {key} and {value}."""
    label = key.split(":", 1)[1] if key.startswith("custom_field:") else key
    template = group_names.get(key, "{key}_{value}")
    return safe_group_name(template.format(key=label, value=value))


def netbox_ansible_host(record: dict[str, Any], settings: NetBoxSettings) -> str | None:
    """The address Ansible connects to, per the ansible_host option."""
    mode = settings.ansible_host
    if mode == "none":
        return None
    if mode == "custom_field":
        value = (record.get("custom_fields") or {}).get(settings.ansible_host_custom_field or "")
        # an IP address custom field holds 'address/prefix length'
        return strip_prefix_length(str(value)) if value not in (None, "") else None
    order = ("primary_ip4", "primary_ip6") if settings.ip_preference == "ipv4" else ("primary_ip6", "primary_ip4")
    for key in order:
        ip = record.get(key)
        if ip:
            # NetBox nests the DNS name in primary_ip4/6: no extra request
            value = ip.get("dns_name") if mode == "dns_name" else ip.get("address")
            if value:
                return value
    return None


_COMMON_VARIABLES = ("site", "role", "platform", "tenant", "status", "tags", "cluster", "custom_fields")
_KIND_VARIABLES = {
    "devices": ("location", "rack", "device_type", "manufacturer"),
    "virtual_machines": ("vcpus", "memory", "disk"),
}
# every cmdb_ variable name (without the prefix) that host_variables may list
NETBOX_VARIABLES = ("kind", "id", *_COMMON_VARIABLES, "primary_ip4", "primary_ip6", *_KIND_VARIABLES["devices"], *_KIND_VARIABLES["virtual_machines"])


def netbox_host(record: dict[str, Any], kind: str, settings: NetBoxSettings) -> HostEntry | None:
    """One slim NetBox device or virtual machine as an inventory host (None if it has no name)."""
    name = record.get("name")
    if not name:
        return None
    p = settings.prefix
    variables: dict[str, Any] = {p + "kind": NETBOX_KINDS[kind]["kind"], p + "id": record.get("id")}
    for key in _COMMON_VARIABLES + _KIND_VARIABLES[kind]:
        variables[p + key] = record.get(key)
    variables[p + "tags"] = record.get("tags") or []
    variables[p + "custom_fields"] = record.get("custom_fields") or {}
    for family in ("primary_ip4", "primary_ip6"):
        variables[p + family] = (record.get(family) or {}).get("address")
    if settings.config_context:
        variables[p + "config_context"] = record.get("config_context") or {}
    for extra in settings.extra_fields:
        if extra in record:
            variables[p + extra] = record[extra]
    if settings.host_variables is not None:
        wanted = {p + name for name in settings.host_variables} | {p + extra for extra in settings.extra_fields}
        if settings.config_context:
            wanted.add(p + "config_context")
        variables = {key: value for key, value in variables.items() if key in wanted}
    address = netbox_ansible_host(record, settings)
    if address:
        variables["ansible_host"] = address
    groups: list[str] = []
    for key in settings.group_by:
        for value in netbox_group_values(record, kind, key):
            group = _group_name_cached(key, value, settings)
            if group and group not in groups:
                groups.append(group)
    return HostEntry(name=str(name), variables=variables, groups=groups)


def _group_name_cached(key: str, value: str, settings: NetBoxSettings) -> str:
    name = settings.group_name_cache.get((key, value))
    if name is None:
        name = settings.group_name_cache[(key, value)] = netbox_group_name(key, value, settings.group_names)
    return name


def netbox_hosts(data: dict[str, Any], settings: NetBoxSettings, warn: Callable[[str], None]) -> list[HostEntry]:
    """Every named device and VM of fetched (slim) data, devices first, each kind by id.

    A name seen twice (a device and a VM, or devices in two sites) keeps the first; the
    others are added as '<name>_<kind>_<id>' and a warning says so.
    """
    hosts: list[HostEntry] = []
    seen: set[str] = set()
    renamed: list[str] = []
    unnamed = 0
    for kind in ("devices", "virtual_machines"):
        for record in sorted(data["records"].get(kind, []), key=lambda r: r.get("id") or 0):
            host = netbox_host(record, kind, settings)
            if host is None:
                unnamed += 1
                continue
            if host.name in seen:
                new_name = "%s_%s_%s" % (host.name, NETBOX_KINDS[kind]["kind"], record.get("id"))
                renamed.append("%s -> %s" % (host.name, new_name))
                host.name = new_name
            seen.add(host.name)
            hosts.append(host)
    if renamed:
        listed = ", ".join(renamed[:10]) + (" ..." if len(renamed) > 10 else "")
        warn("%d CMDB object(s) share a name with another and were renamed: %s" % (len(renamed), listed))
    if unnamed:
        warn("%d CMDB object(s) without a name were left out" % unnamed)
    return hosts


# -- generic REST ---------------------------------------------------------------------------


@dataclass
class RestMapping:
    """Compiled JMESPath expressions of the generic REST backend."""

    records: Any
    host_name: Any
    host_vars: Any | None = None
    host_groups: Any | None = None
    next_link: Any | None = None
    total: Any | None = None

    @classmethod
    def compile(cls, expressions: dict[str, str | None]) -> "RestMapping":
        if jmespath is None:
            raise CmdbError("the Python library 'jmespath' is required on the controller for the rest backend")
        compiled: dict[str, Any] = {}
        for option, text in expressions.items():
            if text in (None, ""):
                compiled[option] = None
                continue
            try:
                compiled[option] = jmespath.compile(text)
            except jmespath.exceptions.ParseError as exc:
                raise CmdbError("rest_%s is not a valid JMESPath expression: %s" % (option, " ".join(str(exc).split())))
        if compiled.get("host_name") is None:
            raise CmdbError("rest_host_name is required for the rest backend")
        if compiled.get("records") is None:
            compiled["records"] = jmespath.compile("@")
        return cls(**compiled)


def rest_records_of(mapping: RestMapping, url: str) -> Callable[[Any], list[Any]]:
    def records_of(body: Any) -> list[Any]:
        found = mapping.records.search(body)
        if found is None:
            raise CmdbError("rest_records selected nothing in the answer of %s; is it the listing's URL?" % public_url(url))
        if not isinstance(found, list):
            raise CmdbError("rest_records did not select a list in the answer of %s" % public_url(url))
        return found

    return records_of


def fetch_rest(
    client: CmdbClient, mapping: RestMapping, pagination: str, query: dict[str, Any], page_size: int, offset_param: str, limit_param: str
) -> dict[str, Any]:
    """All records of a generic REST listing: {'records': {'rest': [...]}}."""
    url = client.rest_url
    records_of = rest_records_of(mapping, url)
    params = dict(query or {})
    if pagination == "offset":
        def total_of(body: Any) -> int | None:
            if mapping.total is None:
                return None
            value = mapping.total.search(body)
            return int(value) if isinstance(value, (int, float, str)) and str(value).isdigit() else None

        records = client.pages_by_offset(url, params, page_size, records_of, total_of, offset_param, limit_param)
    elif pagination == "next_link":
        def next_of(body: Any, response: Any) -> str | None:
            if mapping.next_link is not None:
                value = mapping.next_link.search(body)
                if value:
                    return str(value)
            return (response.links.get("next") or {}).get("url")

        records = client.pages_by_link(url, params, records_of, next_of)
    else:
        body = client.get_json(url, params)[0]
        records = records_of(body)
    return {"format": CACHE_FORMAT, "records": {"rest": records}, "forbidden": []}


def rest_hosts(data: dict[str, Any], mapping: RestMapping, warn: Callable[[str], None]) -> list[HostEntry]:
    """Hosts from generic records: name, variables (a dict) and groups (a list or a string)."""
    hosts: dict[str, HostEntry] = {}
    skipped = 0
    for record in data["records"].get("rest", []):
        name = mapping.host_name.search(record)
        if name in (None, "") or isinstance(name, (dict, list)):
            skipped += 1
            continue
        name = str(name)
        variables = mapping.host_vars.search(record) if mapping.host_vars is not None else None
        if variables is not None and not isinstance(variables, dict):
            raise CmdbError("rest_host_vars must give a dict for each record; for %s it gave %s" % (name, type(variables).__name__))
        groups_value = mapping.host_groups.search(record) if mapping.host_groups is not None else None
        if groups_value is not None and not isinstance(groups_value, list):
            groups_value = [groups_value]
        groups = [safe_group_name(str(g)) for g in (groups_value or []) if g not in (None, "") and not isinstance(g, (dict, list))]
        entry = hosts.setdefault(name, HostEntry(name=name))
        entry.variables.update(variables or {})
        entry.groups.extend(g for g in groups if g not in entry.groups)
    if skipped:
        warn("%d CMDB record(s) gave no host name through rest_host_name and were left out" % skipped)
    return list(hosts.values())
