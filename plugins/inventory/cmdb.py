# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: cmdb
short_description: Hosts, groups and variables from a CMDB (NetBox or a generic REST API)
version_added: 0.1.0
description:
  - Reads devices and virtual machines from NetBox, or records from any JSON REST API, and
    turns them into inventory hosts with groups and C(cmdb_) variables.
  - "NetBox: one listing per object type, large pages fetched in parallel, only the fields
    the inventory uses (the C(fields) query parameter of NetBox 4); never one request per host."
  - Devices and virtual machines are selected and filtered independently.
  - The fetched records are cached through Ansible's cache plugins under a key made of
    everything that changes what is fetched (URL, backend, object types, filters, fields,
    and a hash of the token), so two inventory sources never share an entry and a changed filter is never answered
    from an old one. Grouping and C(compose) run on every load, so changing them needs no
    refresh.
  - Values from the CMDB are never templated.
  - Config files must end in C(cmdb.yml) or C(cmdb.yaml).
author:
  - hepinfra.cloud contributors (@hepinfra)
requirements:
  - requests
  - jmespath (for O(backend=rest))
extends_documentation_fragment:
  - ansible.builtin.constructed
  - ansible.builtin.inventory_cache
options:
  plugin:
    description: The name of this plugin; marks the file as its config.
    required: true
    type: str
    choices: [hepinfra.cloud.cmdb]
  backend:
    description:
      - V(netbox) reads NetBox's devices and virtual machines.
      - V(rest) reads any JSON API through the C(rest_*) options.
    type: str
    default: netbox
    choices: [netbox, rest]
  url:
    description:
      - For V(netbox), the NetBox base URL (without C(/api)).
      - For V(rest), the URL of the listing to read.
    type: str
    required: true
    env:
      - name: HEPINFRA_CMDB_URL
      - name: NETBOX_API
  token:
    description:
      - The API token. NetBox v1 tokens are sent as C(Token <token>), v2 tokens
        (C(nbt_<key>.<secret>)) as C(Bearer <token>).
      - Best given through the environment (an AWX credential type injects it); it never
        appears in a message or in the cache.
    type: str
    env:
      - name: HEPINFRA_CMDB_TOKEN
      - name: NETBOX_TOKEN
  auth_header:
    description: The HTTP header that carries the token (V(rest) backend).
    type: str
    default: Authorization
  auth_scheme:
    description:
      - What precedes the token in O(auth_header) (V(rest) backend); empty sends the token alone.
    type: str
    default: Bearer
  validate_certs:
    description: Verify the CMDB's TLS certificate.
    type: bool
    default: true
    env:
      - name: HEPINFRA_CMDB_VALIDATE_CERTS
  ca_path:
    description: A CA bundle to verify the CMDB's certificate with.
    type: path
    env:
      - name: HEPINFRA_CMDB_CA_PATH
  timeout:
    description: Seconds to wait for each answer.
    type: int
    default: 60
  page_size:
    description:
      - Records per request. NetBox caps it at its C(MAX_PAGE_SIZE) (1000 by default);
        pages are then stepped by what the server returned.
    type: int
    default: 1000
  max_workers:
    description: Pages fetched at the same time.
    type: int
    default: 4
  devices:
    description: Read NetBox devices.
    type: bool
    default: true
  virtual_machines:
    description: Read NetBox virtual machines.
    type: bool
    default: true
  device_query_filters:
    description:
      - NetBox query filters for devices, as in the API (C(site), C(role), C(tag), C(status),
        C(cf_<field>), ...). A list value matches any of its items.
    type: dict
    default: {}
  vm_query_filters:
    description: NetBox query filters for virtual machines, as O(device_query_filters).
    type: dict
    default: {}
  group_by:
    description:
      - The NetBox attributes that make groups, V(kind) (device or virtual_machine), V(site),
        V(location), V(rack), V(role), V(platform), V(tenant), V(tag), V(status),
        V(cluster), V(device_type), V(manufacturer), and V(custom_field:<name>) for a
        custom field (one group per list item).
    type: list
    elements: str
    default: [site, role, tag, status]
  group_names:
    description:
      - Group name format per O(group_by) entry, with C({key}) (the attribute, or the custom
        field's name) and C({value}); the default is C({key}_{value}), for example
        C(site_cern). Characters other than letters, digits and C(_) become C(_).
    type: dict
    default: {}
  ansible_host:
    description:
      - Where C(ansible_host) comes from. V(primary_ip) uses the primary IPv4 or IPv6 address
        (see O(ip_preference)); V(dns_name) the DNS name of that address; V(custom_field)
        the custom field O(ansible_host_custom_field); V(none) sets no C(ansible_host).
    type: str
    default: primary_ip
    choices: [primary_ip, dns_name, custom_field, none]
  ip_preference:
    description: Which primary address wins when a host has both.
    type: str
    default: ipv4
    choices: [ipv4, ipv6]
  ansible_host_custom_field:
    description: The custom field that holds the address, for O(ansible_host=custom_field).
    type: str
  config_context:
    description: Add the rendered config context as C(cmdb_config_context) (NetBox renders it per object, which is slow on large installations).
    type: bool
    default: false
  extra_fields:
    description:
      - More NetBox fields to read and set as C(cmdb_<field>) (nested objects reduced to
        their slug, name or value), for example C(serial) or C(comments).
    type: list
    elements: str
    default: []
  host_variables:
    description:
      - The C(cmdb_) variables to set, without the prefix (V(kind), V(id), V(site), V(role),
        V(platform), V(tenant), V(status), V(tags), V(cluster), V(custom_fields),
        V(primary_ip4), V(primary_ip6), and for devices V(location), V(rack),
        V(device_type), V(manufacturer), for VMs V(vcpus), V(memory), V(disk)).
        Unset, all of them.
      - Each variable costs ansible-core a few microseconds per host. On tens of thousands of
        hosts, naming only the ones the playbooks use loads the inventory faster.
      - O(extra_fields) and O(config_context) are always set; groups and C(ansible_host) do
        not depend on this list.
    type: list
    elements: str
  rest_query:
    description:
      - Query parameters of the V(rest) backend, sent with every page of V(offset) pagination
        and with the first page of V(next_link) pagination (next links carry their own query).
    type: dict
    default: {}
  rest_records:
    description:
      - JMESPath expression selecting the list of records in an answer (V(rest)); V(@) for an
        answer that is a bare list.
    type: str
    default: results
  rest_pagination:
    description:
      - V(none) reads one answer; V(next_link) follows the link that O(rest_next) selects or
        else the C(Link) header's C(rel=next); V(offset) sends O(rest_offset_param) and
        O(rest_limit_param) and, when O(rest_total) gives the total, fetches the pages in parallel.
    type: str
    default: none
    choices: [none, next_link, offset]
  rest_next:
    description: JMESPath expression selecting the next page's URL, for O(rest_pagination=next_link).
    type: str
    default: next
  rest_total:
    description: JMESPath expression selecting the total number of records, for O(rest_pagination=offset).
    type: str
  rest_offset_param:
    description: Query parameter that carries the offset.
    type: str
    default: offset
  rest_limit_param:
    description: Query parameter that carries the page size.
    type: str
    default: limit
  rest_host_name:
    description: JMESPath expression giving a record's inventory host name (required for V(rest)).
    type: str
  rest_host_vars:
    description: JMESPath expression giving a dict of host variables for a record (names used as given).
    type: str
  rest_host_groups:
    description: JMESPath expression giving a group name or a list of group names for a record.
    type: str
notes:
  - "Errors name the endpoint: an unreachable CMDB, a rejected token, a URL that is not a
    listing. An object type the token may not read gives a warning and the other types."
  - The token is only sent to the scheme and host of O(url); redirects are not followed and
    next links to another host are refused. Answers 429, 502, 503 and 504 are retried three
    times with backoff.
  - With C(cache=true), a cached answer is used until O(cache_timeout) expires, even when the
    CMDB is down; C(ansible-inventory --flush-cache) reads afresh.
"""

EXAMPLES = r"""
# inventory/netbox.cmdb.yml: worker VMs and storage devices of one site, grouped.
# URL and token come from HEPINFRA_CMDB_URL / HEPINFRA_CMDB_TOKEN (an AWX credential).
plugin: hepinfra.cloud.cmdb
devices: true
device_query_filters:
  site: cern
  role: [storage, squid]
virtual_machines: true
vm_query_filters:
  status: active
  tag: htcondor-worker
group_by: [site, role, tag, cluster, "custom_field:batch_system"]
group_names:
  tag: "{value}"
ansible_host: primary_ip
ip_preference: ipv6
compose:
  ansible_user: cmdb_custom_fields.admin_user | default('root')
keyed_groups:
  - key: cmdb_platform
    prefix: os
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/hepinfra-cmdb
cache_timeout: 3600

---
# inventory/inhouse.cmdb.yml: an in-house API that pages by a "next" link.
plugin: hepinfra.cloud.cmdb
backend: rest
url: https://cmdb.example.org/api/v2/machines?state=production
auth_header: X-Api-Key
auth_scheme: ""
rest_pagination: next_link
rest_records: data.items
rest_next: data.next
rest_host_name: fqdn
rest_host_vars: "{ansible_host: ip, cmdb_rack: location.rack, cmdb_owner: owner}"
rest_host_groups: "[role, location.room]"
"""

import hashlib
import os
import time
from typing import Any

from ansible.errors import AnsibleError, AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

from ansible_collections.hepinfra.cloud.plugins.plugin_utils._cmdb import (
    CACHE_FORMAT,
    NETBOX_GROUP_BY,
    NETBOX_VARIABLES,
    CmdbClient,
    CmdbError,
    NetBoxSettings,
    RestMapping,
    cache_key,
    check_token,
    fetch_netbox,
    fetch_rest,
    netbox_fields,
    netbox_hosts,
    netbox_token_header,
    public_url,
    redact,
    requests,
    rest_hosts,
)


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "hepinfra.cloud.cmdb"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and path.endswith(("cmdb.yml", "cmdb.yaml"))

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        if requests is None:
            raise AnsibleParserError("the hepinfra.cloud.cmdb inventory needs the Python library 'requests' on the controller")
        backend = self.get_option("backend")
        self._check_common_options()
        settings = self._netbox_settings() if backend == "netbox" else None
        fetch_settings = self._fetch_settings(backend, settings)
        key = cache_key(self.NAME, fetch_settings)

        started = time.perf_counter()
        use_cache = bool(self.get_option("cache"))
        data = None
        update_cache = use_cache and not cache
        if use_cache and cache:
            try:
                data = self._cache[key]
            except KeyError:
                update_cache = True
            if data is not None and (not isinstance(data, dict) or data.get("format") != CACHE_FORMAT):
                data, update_cache = None, True
            elif data is not None:
                self.display.vvv("hepinfra.cloud.cmdb: %s answered from the cache" % public_url(fetch_settings["url"]))
                for kind in data.get("forbidden") or []:
                    self.display.warning(
                        "the CMDB token may not read %s (cached answer); the inventory holds the other object types only" % kind.replace("_", " ")
                    )
        if data is None:
            data = self._fetch(backend, settings)
        if update_cache:
            self._cache[key] = data
        loaded = time.perf_counter()

        try:
            if backend == "netbox":
                hosts = netbox_hosts(data, settings, self.display.warning)
            else:
                hosts = rest_hosts(data, self._rest_mapping(), self.display.warning)
        except CmdbError as exc:
            raise AnsibleParserError("hepinfra.cloud.cmdb (%s): %s" % (public_url(fetch_settings["url"]), exc)) from None
        transformed = time.perf_counter()
        self._populate(hosts)
        self.display.vvv(
            "hepinfra.cloud.cmdb: %d hosts; %s %.2f s, transform %.2f s, populate %.2f s"
            % (len(hosts), "fetch" if update_cache or not use_cache else "cache", loaded - started,
               transformed - loaded, time.perf_counter() - transformed)
        )

    # -- options ------------------------------------------------------------------------------

    def _netbox_settings(self) -> NetBoxSettings:
        group_by = list(self.get_option("group_by") or [])
        for entry in group_by:
            if entry not in NETBOX_GROUP_BY and not (entry.startswith("custom_field:") and len(entry) > len("custom_field:")):
                raise AnsibleParserError(
                    "group_by entry %r is not one of %s or custom_field:<name>" % (entry, ", ".join(NETBOX_GROUP_BY))
                )
        group_names = dict(self.get_option("group_names") or {})
        for entry, template in group_names.items():
            try:
                str(template).format(key="k", value="v")
            except Exception as exc:  # any str.format failure: KeyError, AttributeError, ...
                raise AnsibleParserError("group_names[%s] must be a format with {key} and/or {value}: %s" % (entry, exc))
        if self.get_option("ansible_host") == "custom_field" and not self.get_option("ansible_host_custom_field"):
            raise AnsibleParserError("ansible_host=custom_field needs ansible_host_custom_field")
        host_variables = self.get_option("host_variables")
        if host_variables is not None:
            unknown = sorted(set(host_variables) - set(NETBOX_VARIABLES))
            if unknown:
                raise AnsibleParserError("host_variables: unknown variable(s) %s; choose from %s" % (", ".join(unknown), ", ".join(NETBOX_VARIABLES)))
            host_variables = [str(name) for name in host_variables]
        if not (self.get_option("devices") or self.get_option("virtual_machines")):
            raise AnsibleParserError("devices and virtual_machines are both false: nothing to read")
        return NetBoxSettings(
            group_by=group_by,
            group_names={key: str(value) for key, value in group_names.items()},
            ansible_host=self.get_option("ansible_host"),
            ip_preference=self.get_option("ip_preference"),
            ansible_host_custom_field=self.get_option("ansible_host_custom_field"),
            config_context=bool(self.get_option("config_context")),
            extra_fields=[str(name) for name in self.get_option("extra_fields") or []],
            host_variables=host_variables,
        )

    def _kinds(self) -> dict[str, dict[str, Any]]:
        kinds = {}
        if self.get_option("devices"):
            kinds["devices"] = dict(self.get_option("device_query_filters") or {})
        if self.get_option("virtual_machines"):
            kinds["virtual_machines"] = dict(self.get_option("vm_query_filters") or {})
        return kinds

    def _check_common_options(self) -> None:
        if not self.get_option("url"):
            raise AnsibleParserError("hepinfra.cloud.cmdb needs url (or HEPINFRA_CMDB_URL)")
        for name in ("timeout", "page_size", "max_workers"):
            if self.get_option(name) is None or self.get_option(name) < 1:
                raise AnsibleParserError("hepinfra.cloud.cmdb: %s must be at least 1" % name)
        ca_path = self.get_option("ca_path")
        if ca_path and not os.path.isfile(ca_path):
            raise AnsibleParserError("hepinfra.cloud.cmdb: ca_path %s is not a file" % ca_path)
        try:
            check_token(self.get_option("token"))
        except CmdbError as exc:
            raise AnsibleParserError("hepinfra.cloud.cmdb: %s" % exc) from None

    def _fetch_settings(self, backend: str, settings: NetBoxSettings | None) -> dict[str, Any]:
        """Everything that changes what is fetched: the cache key's input.

        The token is in it only as a hash, so that two tokens with different permissions on the
        same CMDB never share an entry.
        """
        url = self.get_option("url")
        token = check_token(self.get_option("token")) or ""
        identity = hashlib.sha256(("hepinfra.cloud.cmdb:" + token).encode()).hexdigest()
        if backend == "netbox":
            return {
                "backend": backend,
                "url": url.rstrip("/"),
                "identity": identity,
                "kinds": self._kinds(),
                "fields": {kind: netbox_fields(kind, settings) for kind in self._kinds()},
            }
        return {
            "backend": backend,
            "url": url,
            "identity": identity,
            "offset_param": self.get_option("rest_offset_param"),
            "limit_param": self.get_option("rest_limit_param"),
            "query": self.get_option("rest_query"),
            "records": self.get_option("rest_records"),
            "pagination": self.get_option("rest_pagination"),
            "next": self.get_option("rest_next"),
            "total": self.get_option("rest_total"),
            "auth_header": self.get_option("auth_header"),
        }

    def _rest_mapping(self) -> RestMapping:
        return RestMapping.compile({
            "records": self.get_option("rest_records"),
            "host_name": self.get_option("rest_host_name"),
            "host_vars": self.get_option("rest_host_vars"),
            "host_groups": self.get_option("rest_host_groups"),
            "next_link": self.get_option("rest_next") if self.get_option("rest_pagination") == "next_link" else None,
            "total": self.get_option("rest_total"),
        })

    # -- fetch --------------------------------------------------------------------------------

    def _fetch(self, backend: str, settings: NetBoxSettings | None) -> dict[str, Any]:
        url = self.get_option("url")
        token = check_token(self.get_option("token"))
        validate: bool | str = bool(self.get_option("validate_certs"))
        if validate and self.get_option("ca_path"):
            validate = self.get_option("ca_path")
        try:
            if backend == "netbox":
                client = CmdbClient(
                    url, "Authorization", netbox_token_header(token) if token else None, validate,
                    self.get_option("timeout"), self.get_option("max_workers"),
                )
                data = fetch_netbox(client, self._kinds(), settings, self.get_option("page_size"), self.display.warning)
            else:
                mapping = self._rest_mapping()
                scheme = self.get_option("auth_scheme")
                value = ("%s %s" % (scheme, token) if scheme else token) if token else None
                client = CmdbClient(url, self.get_option("auth_header"), value, validate, self.get_option("timeout"), self.get_option("max_workers"))
                data = fetch_rest(
                    client, mapping, self.get_option("rest_pagination"), self.get_option("rest_query"),
                    self.get_option("page_size"), self.get_option("rest_offset_param"), self.get_option("rest_limit_param"),
                )
        except CmdbError as exc:
            raise AnsibleParserError("hepinfra.cloud.cmdb: %s" % redact(str(exc), [token, self.get_option("token")])) from None
        self.display.vvv("hepinfra.cloud.cmdb: %d request(s) to %s" % (client.requests_made, public_url(url)))
        return data

    # -- populate -----------------------------------------------------------------------------

    def _populate(self, hosts: list) -> None:
        strict = self.get_option("strict")
        compose = self.get_option("compose")
        groups = self.get_option("groups")
        keyed_groups = self.get_option("keyed_groups")
        constructed = bool(compose or groups or keyed_groups)
        for host in hosts:
            self.inventory.add_host(host.name)
            for name, value in host.variables.items():
                self.inventory.set_variable(host.name, name, value)
            for group in host.groups:
                self.inventory.add_group(group)
                self.inventory.add_child(group, host.name)
            if not constructed:
                continue
            try:
                self._set_composite_vars(compose, host.variables, host.name, strict=strict)
                variables = self.inventory.get_host(host.name).get_vars()
                self._add_host_to_composed_groups(groups, variables, host.name, strict=strict, fetch_hostvars=False)
                self._add_host_to_keyed_groups(keyed_groups, variables, host.name, strict=strict, fetch_hostvars=False)
            except AnsibleError as exc:
                raise AnsibleParserError("hepinfra.cloud.cmdb: %s" % exc)
