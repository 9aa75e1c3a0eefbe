"""hepinfra.cloud.cmdb's generic REST backend against a small real HTTP service on loopback.

The service stands in for an in-house CMDB: it checks an API key header and pages its
records by a next link in the body, by a Link header, or by offset/limit with a total.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

API_KEY = "in-house-key-5f0c9d"
MACHINES = [
    {"fqdn": f"wn{n:03d}.example.org", "ip": f"10.1.0.{n}", "role": "worker" if n % 3 else "storage",
     "location": {"room": "r1" if n < 6 else "r2", "rack": f"A{n % 4}"}, "owner": "atlas"}
    for n in range(1, 11)
] + [{"fqdn": None, "ip": "10.1.0.99", "role": "worker", "location": {"room": "r9", "rack": "Z"}, "owner": "nobody"}]


class Handler(BaseHTTPRequestHandler):
    requests_seen: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: object, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's name
        Handler.requests_seen.append(self.path)
        if self.headers.get("X-Api-Key") != API_KEY:  # a careless API that repeats what it got
            return self._send(401, {"detail": f"Invalid API key {self.headers.get('X-Api-Key')!r}."})
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path == "/v1/machines":  # next link in the body, 4 per page
            page = int(query.get("page", ["0"])[0])
            chunk = MACHINES[page * 4:(page + 1) * 4]
            following = f"/v1/machines?page={page + 1}" if (page + 1) * 4 < len(MACHINES) else None
            return self._send(200, {"data": {"items": chunk, "next": following}})
        if url.path == "/v2/machines":  # offset/limit with a total; at most 4 per page whatever is asked
            offset, limit = int(query["start"][0]), min(4, int(query["count"][0]))
            return self._send(200, {"total": len(MACHINES), "machines": MACHINES[offset:offset + limit]})
        if url.path == "/v3/machines":  # a bare list, pages linked by the Link header
            page = int(query.get("page", ["0"])[0])
            headers = {"Link": f'<http://{self.headers["Host"]}/v3/machines?page={page + 1}>; rel="next"'} if (page + 1) * 5 < len(MACHINES) else {}
            return self._send(200, MACHINES[page * 5:(page + 1) * 5], headers)
        if url.path == "/loop":
            return self._send(200, {"items": [], "next": "/loop"})
        if url.path == "/elsewhere":  # a next link to another host
            return self._send(200, {"items": [], "next": "http://127.0.0.2:9/steal"})
        if url.path == "/moved":
            self.send_response(301)
            self.send_header("Location", "/v1/machines")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return self._send(404, {"detail": "Not found."})


@pytest.fixture(scope="module")
def service():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def rest(url: str, **options) -> dict:
    return {
        "plugin": "hepinfra.cloud.cmdb", "backend": "rest", "url": url, "token": API_KEY,
        "auth_header": "X-Api-Key", "auth_scheme": "",
        "rest_host_name": "fqdn",
        "rest_host_vars": "{ansible_host: ip, cmdb_rack: location.rack, cmdb_owner: owner}",
        "rest_host_groups": "[role, location.room]",
        **options,
    }


def expected_hosts() -> list[str]:
    return sorted(m["fqdn"] for m in MACHINES if m["fqdn"])


def test_next_link_in_the_body(service, run_inventory):
    Handler.requests_seen.clear()
    result = run_inventory(rest(service + "/v1/machines", rest_pagination="next_link", rest_records="data.items", rest_next="data.next"))
    assert result.returncode == 0, result.stderr
    hostvars = result.data["_meta"]["hostvars"]
    assert sorted(hostvars) == expected_hosts()
    assert hostvars["wn004.example.org"] == {"ansible_host": "10.1.0.4", "cmdb_rack": "A0", "cmdb_owner": "atlas"}
    assert sorted(result.data["storage"]["hosts"]) == ["wn003.example.org", "wn006.example.org", "wn009.example.org"]
    assert sorted(result.data["r2"]["hosts"]) == [f"wn{n:03d}.example.org" for n in range(6, 11)]
    assert len(Handler.requests_seen) == 3  # 11 records, 4 per page
    assert "gave no host name" in result.stderr  # the record without fqdn


def test_offset_with_total_and_keyed_groups(service, run_inventory):
    # the server gives 4 where 10 are asked: pages step by what it returned
    result = run_inventory(rest(service + "/v2/machines", rest_pagination="offset", rest_records="machines", rest_total="total",
                                rest_offset_param="start", rest_limit_param="count", page_size=10,
                                keyed_groups=[{"key": "cmdb_rack", "prefix": "rack"}]))
    assert result.returncode == 0, result.stderr
    assert sorted(result.data["_meta"]["hostvars"]) == expected_hosts()
    assert sorted(result.data["rack_A1"]["hosts"]) == ["wn001.example.org", "wn005.example.org", "wn009.example.org"]


def test_link_header_and_bare_list(service, run_inventory):
    result = run_inventory(rest(service + "/v3/machines", rest_pagination="next_link", rest_records="@", rest_next=""))
    assert result.returncode == 0, result.stderr
    assert sorted(result.data["_meta"]["hostvars"]) == expected_hosts()


def test_wrong_key_is_a_clear_error(service, run_inventory):
    config = rest(service + "/v1/machines", rest_pagination="next_link", rest_records="data.items", rest_next="data.next")
    result = run_inventory({**config, "token": "wrong-key-123456"})
    assert result.returncode != 0
    assert f"the CMDB at {service}/v1/machines rejected the credentials (HTTP 401" in result.stderr
    assert "Invalid API key" in result.stderr  # the server's own words, with the key hidden
    assert "wrong-key-123456" not in result.stderr


def test_mapping_errors_are_clear(service, run_inventory):
    bad_expression = run_inventory(rest(service + "/v1/machines", rest_records="data.items[", rest_pagination="none"))
    assert bad_expression.returncode != 0 and "rest_records is not a valid JMESPath expression" in bad_expression.stderr
    not_a_list = run_inventory(rest(service + "/v1/machines", rest_records="data", rest_pagination="none"))
    assert not_a_list.returncode != 0 and "rest_records did not select a list" in not_a_list.stderr
    no_name = run_inventory({**rest(service + "/v1/machines"), "rest_host_name": None})
    assert no_name.returncode != 0 and "rest_host_name is required" in no_name.stderr
    loop = run_inventory(rest(service + "/loop", rest_pagination="next_link", rest_records="items"))
    assert loop.returncode != 0 and "links back to a page already read" in loop.stderr
    missing = run_inventory(rest(service + "/v1/machines", rest_records="data.nothing", rest_pagination="none"))
    assert missing.returncode != 0 and "rest_records selected nothing" in missing.stderr


def test_the_key_goes_nowhere_else(service, run_inventory):
    elsewhere = run_inventory(rest(service + "/elsewhere", rest_pagination="next_link", rest_records="items"))
    assert elsewhere.returncode != 0
    assert "http://127.0.0.2:9/steal points away from the configured CMDB" in elsewhere.stderr
    moved = run_inventory(rest(service + "/moved", rest_pagination="none", rest_records="data.items"))
    assert moved.returncode != 0
    assert f"{service}/moved redirects (HTTP 301) to {service}/v1/machines" in moved.stderr
