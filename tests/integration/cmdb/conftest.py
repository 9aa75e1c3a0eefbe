"""A real NetBox (PostgreSQL, Redis, gunicorn) seeded through its API, for the whole session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hepinfra_testbed import netbox

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from seed import seed  # noqa: E402  (next to this file)


@dataclass
class Inventory:
    """The result of one `ansible-inventory --list` run."""

    returncode: int
    data: dict
    stdout: str
    stderr: str


def plain(value):
    """JSON output with ansible-core's marks of untrusted strings ({"__ansible_unsafe": s}) removed.

    Every string from the CMDB carries that mark (it is never templated); the tests that
    need it look at the raw stdout.
    """
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


@pytest.fixture(scope="session")
def netbox_instance():
    instance = netbox.up()
    try:
        seed(instance.url, instance.token)
        yield instance
    finally:
        netbox.down()


@pytest.fixture
def run_inventory(tmp_path):
    """Write a *.cmdb.yml and run ansible-inventory --list on it with a clean environment."""

    def run(config: dict, *, env: dict | None = None, flush: bool = False, name: str = "test.cmdb.yml") -> Inventory:
        path = tmp_path / name
        path.write_text(json.dumps(config))
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HEPINFRA_CMDB_", "NETBOX_"))}
        # a source that fails to parse fails the command (as the docs recommend for jobs)
        full_env.update({"ANSIBLE_INVENTORY_ENABLED": "hepinfra.cloud.cmdb", "ANSIBLE_NOCOLOR": "1",
                         "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",
                         "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp")})
        full_env.update(env or {})
        output = tmp_path / "inventory.json"
        output.unlink(missing_ok=True)
        argv = ["ansible-inventory", "-i", str(path), "--list", "--export", "--output", str(output)]
        if flush:
            argv.append("--flush-cache")
        proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=300, check=False)
        data = json.loads(output.read_text()) if proc.returncode == 0 else {}
        return Inventory(proc.returncode, plain(data), proc.stdout, proc.stderr)

    return run
