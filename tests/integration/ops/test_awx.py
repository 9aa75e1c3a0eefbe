"""AWX: the execution environment (ansible-builder), the credential types and the example setup.

No AWX runs here (it needs Kubernetes): ansible-builder really creates the build context and
introspects the installed collection; the credential types' injectors are rendered as AWX
renders them (Jinja2, ``tower.filename`` for the file) and read by the code that uses them; the
setup playbook's tasks are checked against the argument specs of the real awx.awx modules. The
OpenStack credential type also drives a real cloud in test_worker_openstack.py.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
AWX = ROOT / "docs" / "awx"
BIN = Path(sys.executable).parent


def run(argv, **kwargs):
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, **kwargs)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """The collection artifact, as `make build` makes it."""
    where = tmp_path_factory.mktemp("dist")
    source = ROOT / ".tmp" / "collections" / "ansible_collections" / "hepinfra" / "cloud"
    run([BIN / "ansible-galaxy", "collection", "build", source, "--output-path", where])
    return next(where.glob("hepinfra-cloud-*.tar.gz"))


def test_ansible_builder_creates_a_context_with_the_collection(artifact, tmp_path):
    shutil.copy(AWX / "execution-environment.yml", tmp_path / "execution-environment.yml")
    shutil.copy(artifact, tmp_path / "hepinfra-cloud.tar.gz")
    run([BIN / "ansible-builder", "create", "-f", tmp_path / "execution-environment.yml", "-c", tmp_path / "context"])
    containerfile = (tmp_path / "context" / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="quay.io/centos/centos:stream9"' in containerfile
    assert "dnf install -y epel-release" in containerfile
    assert "ansible-galaxy collection install" in containerfile and "introspect" in containerfile
    build = tmp_path / "context" / "_build"
    assert (build / "collections" / "hepinfra-cloud.tar.gz").read_bytes() == artifact.read_bytes()
    requirements = yaml.safe_load((build / "requirements.yml").read_text())
    assert requirements["collections"] == [{"name": "collections/hepinfra-cloud.tar.gz", "type": "file"}]


def test_ansible_builder_finds_the_collections_dependencies(artifact, tmp_path):
    # --force: the test collections path already holds the collection, which galaxy would take as installed
    run([BIN / "ansible-galaxy", "collection", "install", "--force", artifact, "-p", tmp_path / "installed"])
    out = run([BIN / "ansible-builder", "introspect", "--sanitize", tmp_path / "installed"])
    found = yaml.safe_load(out)
    python = [line.split("#")[0].strip() for line in found["python"]]
    system = [line.split("#")[0].strip() for line in found["system"]]
    wanted = [line.strip() for line in (ROOT / "meta" / "ee-requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert python == wanted
    for package in ("restic", "qemu-utils [platform:dpkg]", "libnbd-bin [platform:dpkg]", "libvirt0 [platform:dpkg]"):
        assert package in system


def render(template: str, inputs: dict, filename: str = "") -> str:
    """As AWX renders an injector: Jinja2 over the credential's inputs, ``tower.filename`` for the file."""
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template).render(
        **inputs, tower={"filename": filename})


def credential_type(name: str) -> dict:
    loaded = yaml.safe_load((AWX / name).read_text())
    assert set(loaded) == {"name", "kind", "inputs", "injectors"} and loaded["kind"] == "cloud"
    ids = [field["id"] for field in loaded["inputs"]["fields"]]
    assert set(loaded["inputs"]["required"]) <= set(ids)
    return loaded


def test_cmdb_credential_injects_what_the_inventory_plugin_reads():
    kind = credential_type("credential-type-cmdb.yml")
    env = {key: render(value, {"url": "https://netbox.example.org", "token": "s3cret", "validate_certs": True})
           for key, value in kind["injectors"]["env"].items()}
    assert env == {"HEPINFRA_CMDB_URL": "https://netbox.example.org", "HEPINFRA_CMDB_TOKEN": "s3cret",
                   "HEPINFRA_CMDB_VALIDATE_CERTS": "True"}
    plugin = (ROOT / "plugins" / "inventory" / "cmdb.py").read_text()
    for key in env:
        assert "- name: %s" % key in plugin
    assert [f["id"] for f in kind["inputs"]["fields"] if f.get("secret")] == ["token"]


def test_openstack_credential_gives_the_clouds_a_clouds_yaml(tmp_path):
    kind = credential_type("credential-type-openstack.yml")
    assert [f["id"] for f in kind["inputs"]["fields"] if f.get("secret")] == ["clouds_yaml"]
    clouds_yaml = yaml.safe_dump({"clouds": {"cern-prod": {
        "auth_type": "v3applicationcredential", "region_name": "RegionOne",
        "auth": {"auth_url": "https://keystone.example.org:5000/v3", "application_credential_id": "abc",
                 "application_credential_secret": "s3cret"}}}})
    path = tmp_path / "awx-injected"
    path.write_text(render(kind["injectors"]["file"]["template"], {"clouds_yaml": clouds_yaml}))
    extra = {key: render(value, {}, str(path)) for key, value in kind["injectors"]["extra_vars"].items()}
    assert extra == {"hepinfra_openstack_config": str(path)}
    # The collection's own connection code reads it (no request is sent before first use).
    sys.path.insert(0, str(ROOT / ".tmp" / "collections"))
    clouds = importlib.import_module("ansible_collections.hepinfra.cloud.plugins.module_utils._clouds")
    cloud = clouds.normalize([{"name": "cern-prod", "type": "openstack",
                               "openstack": {"cloud": "cern-prod", "config_file": extra["hepinfra_openstack_config"]}}])["cern-prod"]
    conn = clouds.openstack_connection(cloud)
    assert conn.config.config["auth"]["application_credential_id"] == "abc"
    assert conn.config.get_region_name() == "RegionOne"


def awx_module_spec(name: str) -> dict:
    """The argument spec a real awx.awx module declares (its main() stopped at the module object)."""
    module = importlib.import_module("ansible_collections.awx.awx.plugins.modules.%s" % name)

    class Captured(Exception):
        pass

    class Catch:
        def __init__(self, argument_spec=None, **_kwargs):
            raise Captured(argument_spec)

    original = module.ControllerAPIModule
    module.ControllerAPIModule = Catch
    try:
        module.main()
    except Captured as exc:
        return exc.args[0]
    finally:
        module.ControllerAPIModule = original
    raise AssertionError("awx.awx.%s declared no argument spec" % name)


def test_the_awx_setup_playbook_uses_the_awx_modules_as_they_are():
    sys.path.insert(0, str(ROOT / ".tmp" / "collections"))
    play = yaml.safe_load((AWX / "setup.yml").read_text())[0]
    used = set()
    for task in play["tasks"]:
        name = next(key for key in task if key.startswith("awx.awx."))
        short = name.split(".")[-1]
        spec = awx_module_spec(short)
        known = set(spec) | {alias for option in spec.values() for alias in option.get("aliases", [])}
        args = task[name]
        assert set(args) <= known, "%s: unknown %s" % (name, set(args) - known)
        missing = [key for key, option in spec.items() if option.get("required") and key not in args]
        assert not missing, "%s: missing %s" % (name, missing)
        for key, value in args.items():
            choices = spec.get(key, {}).get("choices")
            if choices and isinstance(value, str) and "{{" not in value:
                assert value in choices, (name, key, value)
        used.add(short)
    assert {"credential_type", "job_template", "schedule"} <= used
    templates = next(t for t in play["tasks"] if "awx.awx.job_template" in t)
    assert [item["playbook"] for item in templates["loop"]] == ["site.yml", "scale.yml", "backup.yml", "images.yml"]
    assert templates["awx.awx.job_template"]["allow_simultaneous"] is False
    rules = {t["awx.awx.schedule"]["unified_job_template"]: t["awx.awx.schedule"]["rrule"]
             for t in play["tasks"] if "awx.awx.schedule" in t}
    assert rules["hepinfra scale"].endswith("RRULE:FREQ=MINUTELY;INTERVAL=1")
    # The credential types it creates are the files in docs/awx/.
    loop = next(t for t in play["tasks"] if "awx.awx.credential_type" in t)["loop"]
    assert sorted(json.dumps(item) for item in loop) == sorted(
        json.dumps("{{ lookup('ansible.builtin.file', '%s') | from_yaml }}" % name)
        for name in ("credential-type-cmdb.yml", "credential-type-openstack.yml"))
    run([BIN / "ansible-playbook", "--syntax-check", AWX / "setup.yml"], cwd=AWX)
