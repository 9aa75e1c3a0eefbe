# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A restic repository, driven through the restic binary.

Secrets (the repository password, S3 keys, anything in ``restic_env``) reach restic only
through its environment, never its arguments: the repository URL itself goes in
``RESTIC_REPOSITORY`` because URLs of rest-server repositories may carry credentials.

Private to this collection.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from typing import Any, IO, Iterable

from ansible_collections.hepinfra.cloud.plugins.module_utils._base import SHARED_SPECS, HepinfraError

# restic's exit codes (0.17+), see `restic help`.
EXIT_NO_REPOSITORY = 10
EXIT_LOCKED = 11
EXIT_WRONG_PASSWORD = 12
# What restic says when it cannot reach a repository at all.
UNREACHABLE = ("connection refused", "no such host", "network is unreachable", "no route to host")

RESTIC_SPEC: dict[str, dict[str, Any]] = {
    "repository": {"type": "str", "required": True},
    "repository_password": {"type": "str", "no_log": True},
    "repository_password_file": {"type": "path", "no_log": False},
    "s3_access_key_id": {"type": "str", "no_log": True},
    "s3_secret_access_key": {"type": "str", "no_log": True},
    "restic_env": {"type": "dict", "default": {}, "no_log": True},
    "restic_path": {"type": "str", "default": "restic"},
    "repository_timeout": {"type": "int", "default": 120},
}
SHARED_SPECS["restic"] = RESTIC_SPEC
RESTIC_MUTUALLY_EXCLUSIVE = [("repository_password", "repository_password_file")]
RESTIC_REQUIRED_ONE_OF = [("repository_password", "repository_password_file")]


class ResticError(HepinfraError):
    """restic failed; ``phase`` says at which step."""


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " / ".join(lines[-count:])


class Restic:
    """One repository. ``params`` are the module parameters of the shared restic spec."""

    def __init__(self, params: dict[str, Any], binary: str, host: str | None = None) -> None:
        self.binary = binary
        self.repository = params["repository"]
        self.timeout = params["repository_timeout"]
        self.host = host
        env = dict(os.environ)
        # A password from the calling environment must never win over the module's.
        for name in ("RESTIC_PASSWORD", "RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD_COMMAND", "RESTIC_REPOSITORY_FILE"):
            env.pop(name, None)
        env["RESTIC_REPOSITORY"] = self.repository
        if params.get("repository_password") is not None:
            env["RESTIC_PASSWORD"] = params["repository_password"]
        else:
            env["RESTIC_PASSWORD_FILE"] = params["repository_password_file"]
        if params.get("s3_access_key_id"):
            env["AWS_ACCESS_KEY_ID"] = params["s3_access_key_id"]
        if params.get("s3_secret_access_key"):
            env["AWS_SECRET_ACCESS_KEY"] = params["s3_secret_access_key"]
        env.update({str(key): str(value) for key, value in (params.get("restic_env") or {}).items()})
        # restic's progress lines are of no use here; one every few seconds keeps its output small.
        env.setdefault("RESTIC_PROGRESS_FPS", "0.2")
        self.env = env

    @property
    def where(self) -> str:
        return "restic repository %s" % redact_url(self.repository)

    # -- plain commands ---------------------------------------------------------------------

    def run(self, args: list[str], phase: str, timeout: float | None = None, ok: Iterable[int] = (0,),
            input_bytes: bytes | None = None) -> subprocess.CompletedProcess:
        """Run restic; raise ResticError unless the exit code is in ``ok``."""
        try:
            result = subprocess.run(
                [self.binary, *args], env=self.env, input=input_bytes, capture_output=True,
                timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if exc.stderr else ""
            raise ResticError(
                "%s: restic did not finish within %d s (%s)" % (phase, timeout, _last_lines(stderr) or "no output"),
                target=self.where,
                hint="check that the repository is reachable, its bucket exists and the S3 keys are right;"
                     " raise repository_timeout for a slow repository",
                phase=phase,
            ) from None
        except OSError as exc:
            raise ResticError("%s: cannot run %s: %s" % (phase, self.binary, exc), target=self.where,
                              hint="install restic 0.17 or later, or set restic_path", phase=phase) from None
        if result.returncode not in ok:
            raise self.error(phase, result.returncode, result.stderr.decode(errors="replace"))
        return result

    def error(self, phase: str, returncode: int, stderr: str) -> ResticError:
        if returncode == EXIT_WRONG_PASSWORD:
            return ResticError("%s: wrong repository password" % phase, target=self.where,
                               hint="check repository_password or repository_password_file", phase=phase)
        if returncode == EXIT_LOCKED:
            return ResticError("%s: the repository is locked by another restic process (%s)" % (phase, _last_lines(stderr)),
                               target=self.where, hint="wait for it, or run 'restic unlock' if it is stale", phase=phase)
        if returncode < 0:
            return ResticError("%s: restic was killed by signal %d" % (phase, -returncode), target=self.where, phase=phase)
        return ResticError("%s: restic exited with %d: %s" % (phase, returncode, _last_lines(stderr) or "no message"),
                           target=self.where, phase=phase)

    def json(self, args: list[str], phase: str, timeout: float | None = None) -> Any:
        out = self.run([*args, "--json"], phase, timeout=timeout).stdout
        try:
            return json.loads(out or b"null")
        except ValueError:
            raise ResticError("%s: restic printed no JSON" % phase, target=self.where, phase=phase) from None

    # -- repository -------------------------------------------------------------------------

    def ensure(self, init: bool, unlock: bool = True) -> bool:
        """Make sure the repository exists and opens with the password; return True if created.

        ``restic init`` is tried first when allowed: on an existing repository it fails at
        once, while ``restic cat config`` retries a missing S3 bucket for minutes.
        """
        if init:
            try:
                self.run(["init"], "repository init", timeout=self.timeout)
                return True
            except ResticError as exc:
                init_error = exc
                # No need to wait for 'cat config' to time out when init already could not connect.
                if any(sign in exc.message.lower() for sign in UNREACHABLE):
                    raise
        else:
            init_error = None
        result = self.run(["cat", "config"], "repository open", timeout=self.timeout, ok=(0, EXIT_NO_REPOSITORY))
        if result.returncode == EXIT_NO_REPOSITORY:
            if init_error is not None:
                raise init_error
            raise ResticError("repository open: there is no restic repository there", target=self.where,
                              hint="check the repository URL (backups create it on first use)", phase="repository open")
        if unlock:
            # Locks left by restic processes that were killed (on this host) would block forget and prune.
            self.run(["unlock"], "repository unlock", timeout=self.timeout)
        return False

    def snapshots(self, tags: Iterable[str] = (), path: str | None = None, host: str | None = None) -> list[dict[str, Any]]:
        args = ["snapshots"]
        for tag in tags:
            args += ["--tag", tag]
        if path:
            args += ["--path", path]
        if host:
            args += ["--host", host]
        return self.json(args, "list snapshots", timeout=self.timeout) or []

    def forget(self, snapshot_ids: list[str]) -> None:
        if snapshot_ids:
            self.run(["forget", *snapshot_ids], "forget")

    def forget_plan(self, policy: dict[str, int], tags: Iterable[str], host: str | None, path: str) -> list[dict[str, Any]]:
        """What restic's own retention policy keeps and removes (a dry run), per group."""
        args = ["forget", "--dry-run", "--group-by", "host,paths", "--path", path]
        for tag in tags:
            args += ["--tag", tag]
        if host:
            args += ["--host", host]
        for key, value in sorted(policy.items()):
            args += ["--" + key.replace("_", "-"), str(value)]
        return self.json(args, "retention", timeout=self.timeout) or []

    def prune(self) -> None:
        self.run(["prune"], "prune")

    def check(self, read_data_subset: str | None) -> str:
        args = ["check"]
        if read_data_subset:
            args.append("--read-data-subset=%s" % read_data_subset)
        return self.run(args, "check").stdout.decode(errors="replace")

    # -- streams ------------------------------------------------------------------------------

    def backup_stream(self, source: IO[bytes], filename: str, tags: Iterable[str], phase: str,
                      on_chunk=None, chunk_size: int = 4 << 20) -> dict[str, Any]:
        """Stream ``source`` into a snapshot of one file; return restic's JSON summary.

        ``on_chunk(bytes)`` sees every chunk (hashing, counting). If reading fails, restic is
        interrupted before it sees the end of its input, so no snapshot of partial data is
        ever written.
        """
        args = [self.binary, "backup", "--stdin", "--stdin-filename", filename, "--json"]
        if self.host:
            args += ["--host", self.host]
        for tag in tags:
            args += ["--tag", tag]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(args, env=self.env, stdin=subprocess.PIPE, stdout=out, stderr=err)  # pylint: disable=consider-using-with
            except OSError as exc:
                raise ResticError("%s: cannot run %s: %s" % (phase, self.binary, exc), target=self.where, phase=phase) from None
            try:
                while True:
                    chunk = source.read(chunk_size)
                    if not chunk:
                        break
                    if on_chunk is not None:
                        on_chunk(chunk)
                    proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # restic ended early: its exit code and stderr tell why
            except BaseException:
                interrupt(proc)
                raise
            returncode = proc.wait()
            err.seek(0)
            out.seek(0)
            if returncode != 0:
                raise self.error(phase, returncode, err.read().decode(errors="replace"))
            for line in reversed(out.read().decode(errors="replace").splitlines()):
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict) and message.get("message_type") == "summary":
                    return message
        raise ResticError("%s: restic reported no snapshot" % phase, target=self.where, phase=phase)

    def dump(self, snapshot_id: str, filename: str, phase: str, sink, chunk_size: int = 4 << 20) -> None:
        """Stream one file of a snapshot into ``sink(chunk)``; raise if restic fails."""
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen([self.binary, "dump", snapshot_id, "/" + filename.lstrip("/")],  # pylint: disable=consider-using-with
                                        env=self.env, stdout=subprocess.PIPE, stderr=err)
            except OSError as exc:
                raise ResticError("%s: cannot run %s: %s" % (phase, self.binary, exc), target=self.where, phase=phase) from None
            try:
                while True:
                    chunk = proc.stdout.read(chunk_size)
                    if not chunk:
                        break
                    sink(chunk)
            except BaseException:
                interrupt(proc, grace=5)
                raise
            finally:
                proc.stdout.close()
            returncode = proc.wait()
            if returncode != 0:
                err.seek(0)
                raise self.error(phase, returncode, err.read().decode(errors="replace"))

    def read_file(self, snapshot_id: str, filename: str, phase: str, limit: int = 64 << 20) -> bytes:
        """The contents of a small file in a snapshot (a manifest)."""
        parts: list[bytes] = []
        size = [0]

        def collect(chunk: bytes) -> None:
            size[0] += len(chunk)
            if size[0] > limit:
                raise ResticError("%s: %s is larger than %d bytes" % (phase, filename, limit), target=self.where, phase=phase)
            parts.append(chunk)

        self.dump(snapshot_id, filename, phase, collect)
        return b"".join(parts)


def interrupt(proc: subprocess.Popen, grace: float = 30) -> None:
    """Stop a restic process so that it writes no snapshot and removes its lock."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def check_repository(url: str) -> None:
    """Refuse credentials inside the repository URL: the URL is a visible option, they are not."""
    if redact_url(url) != url:
        raise HepinfraError("the repository URL carries credentials (user:password@)",
                            hint="put them in restic_env as RESTIC_REST_USERNAME and RESTIC_REST_PASSWORD, which stay secret")


def redact_url(url: str) -> str:
    """A repository URL without credentials (rest:https://user:pass@host/ -> rest:https://***@host/)."""
    scheme_end = url.find("://")
    if scheme_end < 0:
        return url
    rest = url[scheme_end + 3:]
    at = rest.find("@")
    slash = rest.find("/")
    if at >= 0 and (slash < 0 or at < slash):
        return url[:scheme_end + 3] + "***@" + rest[at + 1:]
    return url
