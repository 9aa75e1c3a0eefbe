"""The dynafed role's configuration, rendered from its templates, checked against UGR's syntax.

No DynaFed can run on the test machines (it is packaged for Enterprise Linux 7/8 only), so
these tests render the role's templates with Ansible's own templating and read the result the
way UGR's configuration reader (UgrConfig::ProcessFile) and the documented keys say it is read.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROLE = Path(__file__).resolve().parents[4] / "roles" / "dynafed"

GLOBAL_KEYS = {
    "glb.debug", "glb.log_stderr", "glb.plugin_dir", "glb.n2n_pfx", "glb.n2n_newpfx", "glb.waittimeout",
    "glb.maxlistitems", "glb.statsubdirs", "glb.locplugin[]", "glb.filterplugin[]", "glb.filterplugin.mmdb.fuzz",
    "glb.allowusers[]", "glb.allowgroups[]", "glb.authorizationplugin[]",
    "infohandler.maxitems", "infohandler.itemttl", "infohandler.itemmaxttl", "infohandler.itemttl_negative",
    "infohandler.useextcache", "extcache.memcached.server[]", "extcache.memcached.ttl",
    "extcache.memcached.useBinaryProtocol",
}
PLUGIN_KEYS = {
    "xlatepfx", "readable", "writable", "listable", "max_latency", "ssl_check", "ca_path", "cli_type",
    "cli_certificate", "cli_private_key", "s3.pub_key", "s3.priv_key", "s3.region", "s3.alternate",
    "s3.signaturevalidity",
}
BOOLEAN_KEYS = {"readable", "writable", "listable", "ssl_check", "s3.alternate"}


class UgrSyntaxError(ValueError):
    pass


def parse_ugr(files: dict[str, str]) -> dict[str, list[str]]:
    """Read UGR configuration files as UGR does; return key -> values; raise on what UGR rejects."""
    values: dict[str, list[str]] = {}
    includes = []
    for name, text in files.items():
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{name}:{number}"
            if not line.strip() or line.startswith("#"):
                continue
            if "\t" in line:
                raise UgrSyntaxError(f"{where}: tabs are not trimmed by UGR")
            if line.lower().startswith("include"):
                path = line[len("include"):].strip(" ")
                if not path.startswith("/"):
                    raise UgrSyntaxError(f"{where}: INCLUDE needs an absolute directory, got {path!r}")
                includes.append(path)
                continue
            if ":" not in line:
                raise UgrSyntaxError(f"{where}: not 'key: value': {line!r}")
            key, value = (part.strip(" ") for part in line.split(":", 1))
            if not key or " " in key:
                raise UgrSyntaxError(f"{where}: bad key {key!r}")
            if len(value) > 1023:
                raise UgrSyntaxError(f"{where}: UGR cuts values at 1023 characters")
            if key in values and not key.endswith("[]"):
                raise UgrSyntaxError(f"{where}: {key} set twice (UGR keeps only the last)")
            values.setdefault(key, []).append(value)
    values["INCLUDE"] = includes
    return values


def check_ugr(values: dict[str, list[str]]) -> set[str]:
    """Check keys and plugin lines against the documented UGR syntax; return the endpoint ids."""
    ids = set()
    for line in values.get("glb.locplugin[]", []):
        fields = line.split(" ")
        if len(fields) != 4 or not fields[0].endswith(".so") or not fields[2].isdigit():
            raise UgrSyntaxError(f"glb.locplugin[] needs 'library.so id concurrency url': {line!r}")
        if not re.match(r"^(https?|davs?|s3s?)://", fields[3]):
            raise UgrSyntaxError(f"endpoint URL scheme: {fields[3]!r}")
        ids.add(fields[1])
    for key, found in values.items():
        if key == "INCLUDE":
            continue
        if key.startswith("locplugin."):
            plugin_id, parameter = key.split(".", 2)[1:]
            if plugin_id not in ids:
                raise UgrSyntaxError(f"{key}: no glb.locplugin[] declares {plugin_id}")
            if parameter not in PLUGIN_KEYS:
                raise UgrSyntaxError(f"{key}: unknown plugin parameter")
            if parameter in BOOLEAN_KEYS and found[0] not in ("true", "false"):
                raise UgrSyntaxError(f"{key}: {found[0]!r} is not true/false")
        elif key not in GLOBAL_KEYS:
            raise UgrSyntaxError(f"{key}: not a documented UGR key")
    for line in values.get("glb.allowusers[]", []) + values.get("glb.allowgroups[]", []):
        if not re.match(r'^("[^"]+"|\S+) /\S* [rwldc]+$', line):
            raise UgrSyntaxError(f"access rule needs 'who path modes' separated by single spaces: {line!r}")
    for line in values.get("glb.authorizationplugin[]", []):
        if len(line.split(" ")) != 4:
            raise UgrSyntaxError(f"glb.authorizationplugin[] needs 'library name module function': {line!r}")
    max_ttl = max(int(values["infohandler.itemmaxttl"][0]), int(values["extcache.memcached.ttl"][0]))
    for key, found in values.items():
        if key.endswith(".s3.signaturevalidity") and int(found[0]) < max_ttl:
            raise UgrSyntaxError(f"{key}: S3 signatures must outlive cached answers ({max_ttl} s)")
    return ids


def role_variables(**overrides):
    # Role defaults are trusted templates in a play; mark them so here too.
    variables = {
        name: trust_as_template(value) if isinstance(value, str) and "{{" in value else value
        for name, value in yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()).items()
    }
    variables.update(yaml.safe_load((ROLE / "vars" / "RedHat.yml").read_text()))
    variables["ansible_managed"] = "Ansible managed"
    variables["ansible_facts"] = {"fqdn": "dynafed.example.org"}
    variables["inventory_hostname"] = "dynafed-1"
    variables.update(overrides)
    return variables


def render(template: str, **variables) -> str:
    templar = Templar(loader=DataLoader(), variables=role_variables(**variables))
    return templar.template(trust_as_template((ROLE / "templates" / template).read_text()))


def render_site(**variables) -> dict[str, str]:
    files = {"ugr.conf": render("ugr.conf.j2", **variables)}
    for endpoint in role_variables(**variables)["dynafed_endpoints"]:
        files[f"endpoint-{endpoint['name']}.conf"] = render("endpoint.conf.j2", endpoint=endpoint, **variables)
    return files


ENDPOINTS = [
    {"name": "xrootd-dav", "type": "dav", "url": "davs://xrootd.example.org:1094/data", "writable": True},
    {"name": "ceph_s3", "type": "s3", "url": "s3s://s3.example.org/atlas-bucket", "s3_access_key": "AK1",
     "s3_secret_key": "SECRET-1", "s3_region": "us-east-1", "s3_alternate": True},
    {"name": "web", "type": "http", "url": "https://web.example.org/files", "client_certificate": "/etc/ugr/cert.pem",
     "translate_prefix": "/fed/web /files", "ssl_check": False},
]


def test_site_configuration_reads_as_ugr_reads_it():
    files = render_site(dynafed_endpoints=ENDPOINTS)
    values = parse_ugr(files)
    assert check_ugr(values) == {"xrootd-dav", "ceph_s3", "web"}
    assert values["INCLUDE"] == ["/etc/ugr/conf.d/"]
    assert values["glb.n2n_pfx"] == ["/fed"]
    assert values["extcache.memcached.server[]"] == ["127.0.0.1:11211"]
    assert values["locplugin.xrootd-dav.writable"] == ["true"]
    assert values["locplugin.web.ssl_check"] == ["false"]
    assert values["locplugin.web.cli_private_key"] == ["/etc/ugr/cert.pem"]
    assert values["locplugin.web.xlatepfx"] == ["/fed/web /files"]
    assert "glb.locplugin[]" not in parse_ugr({"ugr.conf": files["ugr.conf"]})


def test_each_endpoint_in_its_own_file_with_its_plugin_library():
    files = render_site(dynafed_endpoints=ENDPOINTS)
    plugin_lines = {name: parse_ugr({name: text}).get("glb.locplugin[]") for name, text in files.items()}
    assert plugin_lines["endpoint-ceph_s3.conf"] == [
        "/usr/lib64/ugr/libugrlocplugin_s3.so ceph_s3 10 s3s://s3.example.org/atlas-bucket"
    ]
    assert plugin_lines["endpoint-xrootd-dav.conf"][0].startswith("/usr/lib64/ugr/libugrlocplugin_dav.so xrootd-dav ")
    assert plugin_lines["endpoint-web.conf"][0].startswith("/usr/lib64/ugr/libugrlocplugin_http.so web ")


def test_s3_secret_only_in_its_endpoint_file():
    files = render_site(dynafed_endpoints=ENDPOINTS)
    holding_secret = [name for name, text in files.items() if "SECRET-1" in text]
    assert holding_secret == ["endpoint-ceph_s3.conf"]
    values = parse_ugr(files)
    assert values["locplugin.ceph_s3.s3.priv_key"] == ["SECRET-1"]
    assert values["locplugin.ceph_s3.s3.alternate"] == ["true"]
    assert values["locplugin.ceph_s3.s3.signaturevalidity"] == ["3600"]


def test_geoip_filter_access_rules_and_token_plugin():
    files = render_site(
        dynafed_endpoints=ENDPOINTS[:1],
        dynafed_geoip_database="/usr/share/GeoIP/GeoLite2-City.mmdb",
        dynafed_allow_users=[{"who": "/DC=org/DC=example/CN=Jane Doe", "path": "/fed/atlas", "modes": "rl"}],
        dynafed_allow_groups=[{"who": "atlas", "path": "/fed/atlas", "modes": "rwl"}],
        dynafed_auth="token",
        dynafed_authorization_plugin={"library": "libugrauthplugin_python27.so", "module": "site_tokens"},
    )
    values = parse_ugr(files)
    check_ugr(values)
    assert values["glb.filterplugin[]"] == ["libugrgeoplugin_mmdb.so geoplug1 /usr/share/GeoIP/GeoLite2-City.mmdb"]
    assert values["glb.allowusers[]"] == ['"/DC=org/DC=example/CN=Jane Doe" /fed/atlas rl']
    assert values["glb.allowgroups[]"] == ["atlas /fed/atlas rwl"]
    assert values["glb.authorizationplugin[]"] == ["libugrauthplugin_python27.so authplug1 site_tokens isallowed"]


def test_no_filter_rules_or_plugin_unless_asked():
    values = parse_ugr(render_site(dynafed_endpoints=ENDPOINTS[:1]))
    for key in ("glb.filterplugin[]", "glb.allowusers[]", "glb.allowgroups[]", "glb.authorizationplugin[]"):
        assert key not in values


@pytest.mark.parametrize(
    "text, problem",
    [
        ("INCLUDE: /etc/ugr/conf.d/\n", "absolute directory"),
        ("glb.debug: 1\nglb.debug: 2\n", "set twice"),
        ("glb.debug 1\n", "not 'key: value'"),
        ("glb.debug:\t1\n", "tabs"),
    ],
)
def test_the_reader_rejects_what_ugr_rejects(text, problem):
    with pytest.raises(UgrSyntaxError, match=problem):
        parse_ugr({"ugr.conf": text})


@pytest.mark.parametrize(
    "values, problem",
    [
        ({"glb.locplugin[]": ["libugrlocplugin_dav.so x 10"]}, "needs 'library.so"),
        ({"locplugin.ghost.readable": ["true"]}, "no glb.locplugin"),
        ({"glb.redirect.x": ["1"]}, "not a documented"),
        ({"glb.locplugin[]": ["/l/libugrlocplugin_s3.so s 10 s3://h/b"], "locplugin.s.s3.signaturevalidity": ["60"]},
         "outlive"),
    ],
)
def test_the_checker_rejects_bad_configurations(values, problem):
    base = {"infohandler.itemmaxttl": ["3600"], "extcache.memcached.ttl": ["3600"], "INCLUDE": []}
    with pytest.raises(UgrSyntaxError, match=problem):
        check_ugr({**base, **values})


def test_apache_x509_writable_site():
    conf = render("zlcgdm-ugr-dav.conf.j2", dynafed_endpoints=ENDPOINTS)
    assert "NSDMLite /etc/ugr/ugrdmlite.conf" in conf
    assert "NSType DPM" in conf
    assert "SSLVerifyClient require" in conf
    assert "SSLCACertificatePath /etc/grid-security/certificates" in conf
    assert re.search(r"<Location /fed>\n\s+DAV nameserver\n\s+NSFlags Write\n", conf)
    assert "ServerName dynafed.example.org" in conf
    assert "SSLCARevocationPath /etc/grid-security/certificates" in conf
    assert "Listen" not in conf


def test_apache_anonymous_read_only_site():
    conf = render(
        "zlcgdm-ugr-dav.conf.j2", dynafed_endpoints=ENDPOINTS[1:], dynafed_auth="none", dynafed_namespace_prefix="/myfed"
    )
    assert "NSType LFC" in conf
    assert "NSFlags" not in conf
    assert "NSAnon nobody" in conf
    assert "<Location /myfed>" in conf
    assert "SSLEngine" not in conf


def test_apache_on_another_port_listens_there_and_only_there():
    conf = render("zlcgdm-ugr-dav.conf.j2", dynafed_endpoints=ENDPOINTS, dynafed_https_port=8443)
    ssl_conf = render("ssl.conf.j2", dynafed_https_port=8443)
    assert "<VirtualHost *:8443>" in conf
    assert re.findall(r"(?m)^Listen .*", ssl_conf) == ["Listen 8443 https"]
    assert "VirtualHost" not in ssl_conf
