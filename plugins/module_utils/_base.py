# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The base every hepinfra.cloud module stands on.

A module subclasses :class:`HepinfraModule`, declares its own ``argument_spec`` and the
shared specs it uses, and implements :meth:`HepinfraModule.run`, which returns the result
dict. The base class:

* merges the module's argument spec with the shared ones (refusing conflicting definitions),
* builds the AnsibleModule with check mode supported unless the module says otherwise,
* fails with ``missing_required_lib`` when an optional Python library is not importable,
* turns :class:`HepinfraError` and registered client exceptions into ``fail_json`` with a
  message a person can act on (what failed, where, what to do), without a traceback,
* adds ``diff`` (``before``/``after``) to the result when diff mode is on.

Private to this collection: the leading underscore means the API may change between
releases.
"""

from __future__ import annotations

import copy
import importlib
import traceback
from typing import Any, Callable

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

# Shared option sets, by name. Later capabilities register theirs here (cloud
# authentication, restic repository, ...), and the matching doc fragment documents them.
SHARED_SPECS: dict[str, dict[str, dict[str, Any]]] = {}


class HepinfraError(Exception):
    """An expected failure: the message is shown to the user as it is.

    ``target`` names where it happened (a cloud, a host, a VM); ``hint`` says what to do.
    """

    def __init__(self, message: str, target: str | None = None, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.target = target
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        return format_error(self.message, self.target, self.hint)


class ArgumentSpecConflict(ValueError):
    """Two argument specs define the same option differently."""


def format_error(message: str, target: str | None = None, hint: str | None = None) -> str:
    """One line a person can act on: '<target>: <message>. <hint>'."""
    text = message.rstrip(".")
    if target:
        text = "%s: %s" % (target, text)
    text += "."
    if hint:
        text += " " + hint.rstrip(".") + "."
    return text


def merge_argument_specs(*specs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Merge option dicts; the same option may appear twice only with the same definition."""
    merged: dict[str, dict[str, Any]] = {}
    for spec in specs:
        for name, definition in spec.items():
            if name in merged and merged[name] != definition:
                raise ArgumentSpecConflict("option %r is defined twice with different specs" % name)
            merged[name] = copy.deepcopy(definition)
    return merged


def optional_import(module_name: str) -> tuple[Any, str | None]:
    """Import an optional library; return (module or None, formatted traceback or None)."""
    try:
        return importlib.import_module(module_name), None
    except ImportError:
        return None, traceback.format_exc()


class HepinfraModule:
    """Base class of the collection's modules. Subclasses set the class attributes and run()."""

    #: The module's own options.
    argument_spec: dict[str, dict[str, Any]] = {}
    #: Names of entries in SHARED_SPECS merged into the module's options.
    shared_specs: tuple[str, ...] = ()
    #: Optional libraries: (import name, pip name); checked before run().
    requirements: tuple[tuple[str, str], ...] = ()
    #: Check mode is supported unless a module says otherwise (and explains why in its docs).
    supports_check_mode: bool = True
    #: Extra AnsibleModule keyword arguments (mutually_exclusive, required_if, ...).
    module_kwargs: dict[str, Any] = {}
    #: Client exceptions turned into failures: (exception class, function(exc) -> HepinfraError).
    error_translations: tuple[tuple[type[BaseException], Callable[[BaseException], HepinfraError]], ...] = ()

    def __init__(self) -> None:
        spec = merge_argument_specs(self.argument_spec, *(SHARED_SPECS[name] for name in self.shared_specs))
        self.module = AnsibleModule(
            argument_spec=spec,
            supports_check_mode=self.supports_check_mode,
            **self.module_kwargs,
        )
        self.params: dict[str, Any] = self.module.params
        self.libraries: dict[str, Any] = {}
        for import_name, pip_name in self.requirements:
            library, error = optional_import(import_name)
            if library is None:
                self.module.fail_json(msg=missing_required_lib(pip_name), exception=error)
            self.libraries[import_name] = library

    @property
    def check_mode(self) -> bool:
        return bool(self.module.check_mode)

    @property
    def diff_mode(self) -> bool:
        return bool(self.module._diff)  # pylint: disable=protected-access

    def run(self) -> dict[str, Any]:
        """Do the work and return the result (must contain 'changed')."""
        raise NotImplementedError

    def result(self, changed: bool, before: Any = None, after: Any = None, **values: Any) -> dict[str, Any]:
        """Build a result; in diff mode with something changed, include diff={before, after}."""
        outcome: dict[str, Any] = dict(values, changed=changed)
        if self.diff_mode and changed:
            outcome["diff"] = {"before": before if before is not None else {}, "after": after if after is not None else {}}
        return outcome

    def fail(self, message: str, target: str | None = None, hint: str | None = None, **details: Any) -> None:
        self._fail(format_error(message, target, hint), details)

    def _fail(self, message: str, details: dict[str, Any]) -> None:
        # Client libraries like to quote the request they sent; a secret option must never
        # reach the output even when the message was not built here.
        for secret in sorted(self.module.no_log_values, key=len, reverse=True):
            if secret:
                message = message.replace(secret, "********")
        self.module.fail_json(msg=message, **details)

    def execute(self) -> None:
        """Run the module and exit through exit_json or fail_json."""
        try:
            outcome = self.run()
        except HepinfraError as exc:
            self._fail(str(exc), exc.details)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            for exc_class, translate in self.error_translations:
                if isinstance(exc, exc_class):
                    error = translate(exc)
                    self._fail(str(error), error.details)
            raise
        if "changed" not in outcome:
            raise ValueError("%s.run() returned a result without 'changed'" % type(self).__name__)
        self.module.exit_json(**outcome)
