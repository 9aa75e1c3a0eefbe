"""Check DynaFed storage endpoints with davix: list, read, and write where allowed.

Usage: python3 dynafed_healthcheck.py SPEC.json
SPEC.json: {"endpoints": [...], "timeout": seconds} with the role's endpoint entries.
Prints one JSON document: {"endpoints": [{"name", "url", "ok", "checks": {...}}]}.
Secrets are read from the file (mode 0600) and never printed; error texts are scrubbed of them.
davix takes S3 keys only as arguments, so they are visible in the process list of this host
while a check runs: run the check on a host whose users may see them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

SCHEMES = {"dav": "http", "davs": "https", "s3": "http", "s3s": "https"}


def http_url(url):
    scheme, rest = url.split("://", 1)
    return SCHEMES.get(scheme, scheme) + "://" + rest


def davix_options(endpoint, timeout):
    options = ["--timeout", str(timeout), "--retry", "0"]
    if not endpoint.get("ssl_check", True):
        options.append("--insecure")
    elif endpoint.get("ca_path"):
        options += ["--capath", endpoint["ca_path"]]
    if endpoint.get("client_certificate"):
        options += ["--cert", endpoint["client_certificate"]]
        options += ["--key", endpoint.get("client_key") or endpoint["client_certificate"]]
    if endpoint.get("type") == "s3":
        options += ["--s3accesskey", endpoint["s3_access_key"], "--s3secretkey", endpoint["s3_secret_key"]]
        if endpoint.get("s3_region"):
            options += ["--s3region", endpoint["s3_region"]]
        if endpoint.get("s3_alternate"):
            options.append("--s3alternate")
    return options


def scrub(text, endpoint):
    for key in ("s3_access_key", "s3_secret_key"):
        if endpoint.get(key):
            text = text.replace(str(endpoint[key]), "********")
    return text.strip()[-500:]


def run(command, options, arguments, endpoint, stdout_path=None):
    started = time.monotonic()
    try:
        with open(stdout_path or os.devnull, "wb") as stdout:
            process = subprocess.run(
                [command] + options + arguments, stdout=stdout, stderr=subprocess.PIPE, check=False
            )
    except FileNotFoundError:
        return {"ok": False, "error": "%s is not installed on this host (package davix)" % command}
    result = {"ok": process.returncode == 0, "seconds": round(time.monotonic() - started, 3)}
    if process.returncode != 0:
        result["error"] = scrub(process.stderr.decode("utf-8", "replace"), endpoint) or "exit %d" % process.returncode
    return result


def check(endpoint, timeout, workdir):
    base = http_url(endpoint["url"]).rstrip("/")
    options = davix_options(endpoint, timeout)
    checks = {}
    if endpoint.get("listable", True):
        checks["list"] = run("davix-ls", options, [base + "/"], endpoint)
    if endpoint.get("readable", True) and endpoint.get("check_path"):
        checks["read"] = run("davix-get", options, [base + "/" + endpoint["check_path"].lstrip("/")], endpoint)
    if endpoint.get("writable", False):
        probe = "hepinfra-healthcheck-%s" % uuid.uuid4().hex
        content = ("hepinfra.cloud dynafed health check %s\n" % probe).encode()
        local = os.path.join(workdir, probe)
        back = local + ".back"
        with open(local, "wb") as handle:
            handle.write(content)
        checks["write"] = run("davix-put", options, [local, base + "/" + probe], endpoint)
        if checks["write"]["ok"]:
            checks["read_back"] = run("davix-get", options, [base + "/" + probe], endpoint, stdout_path=back)
            if checks["read_back"]["ok"]:
                with open(back, "rb") as handle:
                    if handle.read() != content:
                        checks["read_back"] = {"ok": False, "error": "the probe read back differs from what was written"}
            # davix-rm does not sign S3 requests; davix-http does. Its exit code does not
            # always reflect the HTTP status, so the probe must be gone afterwards.
            checks["delete"] = run("davix-http", ["-X", "DELETE"] + options, [base + "/" + probe], endpoint)
            if checks["delete"]["ok"] and run("davix-get", options, [base + "/" + probe], endpoint)["ok"]:
                checks["delete"] = {"ok": False, "error": "the probe is still there after DELETE"}
    if not checks:
        checks["list"] = {"ok": False, "error": "nothing to check: the endpoint is neither listable, readable with check_path, nor writable"}
    return {
        "name": endpoint["name"],
        "url": endpoint["url"],
        "ok": all(result["ok"] for result in checks.values()),
        "checks": checks,
    }


def main(spec_path):
    with open(spec_path) as handle:
        spec = json.load(handle)
    with tempfile.TemporaryDirectory(prefix="dynafed-healthcheck-") as workdir:
        report = [check(endpoint, spec.get("timeout", 30), workdir) for endpoint in spec["endpoints"]]
    json.dump({"endpoints": report}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: dynafed_healthcheck.py SPEC.json")
    main(sys.argv[1])
