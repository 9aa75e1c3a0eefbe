"""Shared helpers of the testbed: where it keeps things, how it runs commands, what it owns."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

# Every container, network and guest the testbed creates carries this label (or, for
# libvirt domains, this metadata namespace); teardown touches nothing without it.
LABEL = "io.hepinfra.testbed"
LIBVIRT_NS = "https://hepinfra.cloud/testbed/1"
PREFIX = "hepinfra-tb"


class TestbedError(RuntimeError):
    """A testbed step failed; the message says what and what to do."""

    __test__ = False  # not a pytest test class, despite its name


def cache_dir() -> Path:
    """Where built images live between runs (keyed by recipe hash)."""
    explicit = os.environ.get("HEPINFRA_TESTBED_CACHE")
    if explicit:
        path = Path(explicit)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "hepinfra-testbed"
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_dir() -> Path:
    """Where the running testbed records what it started (pids, overlays, seeds)."""
    path = Path(os.environ.get("HEPINFRA_TESTBED_STATE") or (cache_dir() / "state"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# The services listen on loopback ports 58000-58999 (NetBox 58080, S3 58300-58307, OpenStack
# 58500-58523), inside Linux's ephemeral range (32768-60999): any outgoing connection on the
# machine may take one of them as its local port, and a service that starts then finds its port
# in use (RabbitMQ's distribution port did so once in CI). Reserving the range keeps the kernel
# from handing these ports to outgoing connections; teardown gives it back.
SERVICE_PORTS = "58000-58999"
_RESERVED = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")


def reserve_service_ports() -> None:
    """Keep SERVICE_PORTS out of the ephemeral range (needs root; without it, only a note)."""
    try:
        current = [entry for entry in _RESERVED.read_text().strip().split(",") if entry]
    except OSError:
        return
    if SERVICE_PORTS in current:
        return
    try:
        _RESERVED.write_text(",".join([*current, SERVICE_PORTS]))
    except OSError as exc:
        log(f"could not reserve ports {SERVICE_PORTS} from ephemeral use ({exc}): a service may find its port taken")


def release_service_ports() -> bool:
    """Undo reserve_service_ports(); True when there was something to undo."""
    try:
        current = [entry for entry in _RESERVED.read_text().strip().split(",") if entry]
        if SERVICE_PORTS not in current:
            return False
        _RESERVED.write_text(",".join(entry for entry in current if entry != SERVICE_PORTS) or "\n")
        return True
    except OSError:
        return False


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[testbed {stamp}] {message}", file=sys.stderr, flush=True)


def run(
    argv: Iterable[str],
    *,
    check: bool = True,
    capture: bool = True,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise TestbedError carrying the command and its stderr."""
    args = [str(a) for a in argv]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        proc = subprocess.run(
            args,
            check=False,
            text=True,
            input=input_text,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=full_env,
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        raise TestbedError(f"{args[0]} is not installed: run 'make bootstrap' first") from exc
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"timed out after {timeout}s: {shlex.join(args)}") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip()[-2000:] if capture else ""
        raise TestbedError(f"command failed ({proc.returncode}): {shlex.join(args)}\n{detail}")
    return proc


def recipe_hash(*parts: Any) -> str:
    """A stable key for a build: the recipe data plus the source of the functions that use it."""
    digest = hashlib.sha256()
    for part in parts:
        if callable(part):
            digest.update(inspect.getsource(part).encode())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12]


def wait_for(predicate, timeout: float, interval: float = 1.0, what: str = "condition"):
    """Poll predicate() until it returns something truthy; raise TestbedError on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - the last error is reported on timeout
            last_error = exc
        time.sleep(interval)
    suffix = f" (last error: {last_error})" if last_error else ""
    raise TestbedError(f"timed out after {timeout:.0f}s waiting for {what}{suffix}")


def remove_chains(prefix: str, only_empty: bool) -> list[str]:
    """Remove iptables chains named prefix* (and the jumps to them) that daemons leave behind.

    With only_empty, a chain that still holds rules is kept (someone still uses it).
    """
    removed = []
    for binary in ("iptables", "ip6tables"):
        if shutil.which(binary) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            listing = run([binary, "-w", "-t", table, "-S"], check=False).stdout.splitlines()
            chains = [line.split()[1] for line in listing if line.startswith(f"-N {prefix}")]
            doomed = [c for c in chains if not (only_empty and any(line.startswith(f"-A {c} ") for line in listing))]
            for line in listing:
                words = shlex.split(line)
                if words[:1] == ["-A"] and "-j" in words and words[words.index("-j") + 1] in doomed:
                    run([binary, "-w", "-t", table, "-D", *words[1:]], check=False)
            for chain in doomed:
                run([binary, "-w", "-t", table, "-F", chain], check=False)
            for chain in doomed:
                if run([binary, "-w", "-t", table, "-X", chain], check=False).returncode == 0:
                    removed.append(f"{binary} {table} {chain}")
    return removed
