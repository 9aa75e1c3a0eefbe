# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module base class: what a module built on it does for its users."""

from __future__ import annotations

import pytest

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args

from ansible_collections.hepinfra.cloud.plugins.module_utils import _base
from ansible_collections.hepinfra.cloud.plugins.module_utils._base import (
    ArgumentSpecConflict,
    HepinfraError,
    HepinfraModule,
    format_error,
    merge_argument_specs,
)


class Exited(Exception):
    def __init__(self, kind, result):
        super().__init__(kind)
        self.kind = kind
        self.result = result


@pytest.fixture(autouse=True)
def capture_exit(monkeypatch):
    def exit_json(self, **result):
        raise Exited("exit", result)

    def fail_json(self, msg, **result):
        result["msg"] = msg
        result["failed"] = True
        raise Exited("fail", result)

    monkeypatch.setattr(AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(AnsibleModule, "fail_json", fail_json)


class ClientTimeout(Exception):
    """Stands for an exception class of a cloud client library."""


class FileModule(HepinfraModule):
    """A small module: makes sure a key of a dict held in memory has a value."""

    argument_spec = {
        "name": {"type": "str", "required": True},
        "value": {"type": "str"},
        "password": {"type": "str", "no_log": True},
        "mode": {"type": "str", "default": "ok", "choices": ["ok", "expected-failure", "client-timeout", "bug"]},
    }
    store: dict = {}
    error_translations = (
        (ClientTimeout, lambda exc: HepinfraError("the API did not answer in time", target="cloud-a",
                                                  hint="check the endpoint, then retry")),
    )

    def run(self):
        mode = self.params["mode"]
        if mode == "expected-failure":
            raise HepinfraError("image %s not found (password %s)" % (self.params["name"], self.params["password"]),
                                target="cloud-b", hint="upload it first")
        if mode == "client-timeout":
            raise ClientTimeout("socket timeout")
        if mode == "bug":
            raise KeyError("unexpected")
        before = {"value": self.store.get(self.params["name"])}
        after = {"value": self.params["value"]}
        changed = before != after
        if changed and not self.check_mode:
            self.store[self.params["name"]] = self.params["value"]
        return self.result(changed, before, after, value=self.params["value"])


def run_module(cls, args):
    with patch_module_args(args):
        with pytest.raises(Exited) as info:
            cls().execute()
    return info.value.kind, info.value.result


@pytest.fixture(autouse=True)
def empty_store():
    FileModule.store = {}


def test_change_then_idempotent():
    kind, result = run_module(FileModule, {"name": "a", "value": "1"})
    assert kind == "exit" and result["changed"] is True
    kind, result = run_module(FileModule, {"name": "a", "value": "1"})
    assert kind == "exit" and result["changed"] is False
    assert FileModule.store == {"a": "1"}


def test_check_mode_reports_change_without_making_it():
    kind, result = run_module(FileModule, {"name": "a", "value": "1", "_ansible_check_mode": True})
    assert kind == "exit" and result["changed"] is True
    assert FileModule.store == {}


def test_diff_only_in_diff_mode_and_only_when_changed():
    _kind, plain = run_module(FileModule, {"name": "a", "value": "1"})
    assert "diff" not in plain
    _kind, with_diff = run_module(FileModule, {"name": "a", "value": "2", "_ansible_diff": True})
    assert with_diff["diff"] == {"before": {"value": "1"}, "after": {"value": "2"}}
    _kind, unchanged = run_module(FileModule, {"name": "a", "value": "2", "_ansible_diff": True})
    assert "diff" not in unchanged


def test_check_and_diff_mode_together_match_a_real_run():
    _kind, checked = run_module(FileModule, {"name": "a", "value": "1", "_ansible_check_mode": True, "_ansible_diff": True})
    _kind, real = run_module(FileModule, {"name": "a", "value": "1", "_ansible_diff": True})
    assert checked["changed"] is True
    assert real["changed"] is True
    assert checked["diff"] == real["diff"]


def test_expected_failure_is_actionable_and_hides_secrets():
    kind, result = run_module(FileModule, {"name": "img", "mode": "expected-failure", "password": "s3cr3t-pw"})
    assert kind == "fail"
    assert result["msg"].startswith("cloud-b: image img not found")
    assert result["msg"].endswith("upload it first.")
    assert "s3cr3t-pw" not in result["msg"]
    assert "(password ********)" in result["msg"]
    assert "exception" not in result


def test_client_exception_is_translated():
    kind, result = run_module(FileModule, {"name": "a", "mode": "client-timeout"})
    assert kind == "fail"
    assert result["msg"] == "cloud-a: the API did not answer in time. check the endpoint, then retry."


def test_unexpected_exception_is_not_swallowed():
    with patch_module_args({"name": "a", "mode": "bug"}):
        with pytest.raises(KeyError):
            FileModule().execute()


def test_bad_input_is_refused_by_the_argument_spec():
    kind, result = run_module(FileModule, {"name": "a", "mode": "sideways"})
    assert kind == "fail"
    assert "mode" in result["msg"] and "sideways" in result["msg"]


class NeedsMissingLibrary(FileModule):
    requirements = (("hepinfra_library_that_is_not_installed", "hepinfra-missing"),)


def test_missing_optional_library_names_the_package():
    kind, result = run_module(NeedsMissingLibrary, {"name": "a"})
    assert kind == "fail"
    assert "hepinfra-missing" in result["msg"]
    assert "ModuleNotFoundError" in result["exception"]


class UsesSharedSpec(FileModule):
    shared_specs = ("test_cloud",)

    def run(self):
        return self.result(False, cloud=self.params["cloud"])


def test_shared_specs_are_merged(monkeypatch):
    monkeypatch.setitem(_base.SHARED_SPECS, "test_cloud", {"cloud": {"type": "str", "default": "local"}})
    kind, result = run_module(UsesSharedSpec, {"name": "a"})
    assert kind == "exit" and result["cloud"] == "local"


def test_conflicting_specs_are_refused():
    same = {"name": {"type": "str"}}
    assert merge_argument_specs(same, same) == same
    with pytest.raises(ArgumentSpecConflict):
        merge_argument_specs(same, {"name": {"type": "int"}})


class ForgetsChanged(FileModule):
    def run(self):
        return {"value": 1}


def test_result_without_changed_is_a_bug():
    with patch_module_args({"name": "a"}):
        with pytest.raises(ValueError, match="without 'changed'"):
            ForgetsChanged().execute()


@pytest.mark.parametrize(
    "message, target, hint, expected",
    [
        ("boom", None, None, "boom."),
        ("boom.", "vm1", None, "vm1: boom."),
        ("boom", "vm1", "restart libvirtd.", "vm1: boom. restart libvirtd."),
    ],
)
def test_format_error(message, target, hint, expected):
    assert format_error(message, target, hint) == expected
