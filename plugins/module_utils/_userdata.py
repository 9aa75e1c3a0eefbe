# -*- coding: utf-8 -*-
# Copyright: hepinfra.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""User-data for ephemeral worker VMs: parts rendered per worker, stripped, packed, sized.

:func:`build_user_data` takes a list of parts (dicts, see :data:`PART_TYPES`) and a per-worker
context, and returns a :class:`UserData`: a MIME multipart/mixed message that cloud-init reads,
gzip-compressed when that helps (or when forced), with every size a person needs to see why it
does not fit a cloud's limit.

* Each part's ``content`` is a Jinja template (unless ``template: false``) rendered in a sandbox
  with StrictUndefined, so a variable missing from the context is an error naming it.
* Stripping (``strip: true``, the default) removes what the worker does not need without
  changing what it does: cloud-config is re-emitted as compact JSON (which YAML reads), shell
  scripts lose blank and comment lines but keep the ``#!`` line, heredoc bodies, quoted strings
  and continued lines, INI-like CernVM sections lose blank and comment lines.
* ``file`` parts become ``write_files`` entries (base64) of one generated cloud-config part, the
  last one, whose ``merge_how`` appends to the ``write_files`` of the user's own cloud-config.

Only the standard library at import time: module_utils may run on a host without jinja2 or
PyYAML; jinja2 is imported when a part really is a template, PyYAML when a part is cloud-config.

Private to this collection: the leading underscore means the API may change between releases.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import gzip
import hashlib
import json
import math
import re
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any, Mapping

#: OpenStack (nova) accepts user-data up to 65535 bytes after base64 encoding.
OPENSTACK_LIMIT = 65535
#: EC2 accepts user-data up to 16384 bytes before base64 encoding.
EC2_LIMIT = 16384

#: Part type -> (MIME subtype under text/, default filename extension). ``file`` parts have no
#: MIME part of their own: they are written by the generated write_files cloud-config part.
PART_TYPES: dict[str, tuple[str, str] | None] = {
    "cloud-config": ("cloud-config", "cfg"),
    "shell": ("x-shellscript", "sh"),
    "boothook": ("cloud-boothook", "sh"),
    "ucernvm": ("ucernvm", "ucernvm"),
    "amiconfig": ("amiconfig", "amiconfig"),
    "include": ("x-include-url", "txt"),
    "file": None,
}

#: Filename of the generated cloud-config part that carries the ``file`` parts.
WRITE_FILES_FILENAME = "write-files.cfg"

#: cloud-init applies a part's merge_how when merging that part into the configuration gathered
#: from the parts before it: lists are appended (write_files of both survive), dicts merged.
WRITE_FILES_MERGE_HOW = [
    {"name": "list", "settings": ["append"]},
    {"name": "dict", "settings": ["no_replace", "recurse_list"]},
]

_COMMON_KEYS = frozenset(("type", "content", "template"))
_ALLOWED_KEYS = {
    "file": _COMMON_KEYS | {"path", "permissions", "owner", "defer"},
}
_MIME_PART_KEYS = _COMMON_KEYS | {"strip", "filename"}
_COMPRESSION_CHOICES = "true, false or 'auto'"
_TEMPLATE_MARKERS = ("{{", "{%", "{#")
_PERMISSIONS = re.compile(r"^[0-7]{3,4}$")
_OWNER = re.compile(r"^[^\s:]+(:[^\s:]+)?$")
_BAD_FILENAME = re.compile(r"[/\\\"\x00-\x1f\x7f]")
# Characters YAML readers fold, drop or refuse inside a double-quoted scalar (C1 controls, NEL,
# line/paragraph separators, BOM, non-characters); json.dumps leaves them raw with ensure_ascii off.
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")


class UserDataError(ValueError):
    """Bad parts, a template that does not render, or user-data over the cloud's limit."""


@dataclasses.dataclass
class Part:
    """One validated input part; ``where`` names it in messages: "parts[2] (shell 'x.sh')"."""

    index: int
    type: str
    content: str
    template: bool = True
    strip: bool = True
    filename: str | None = None
    path: str | None = None
    permissions: str = "0644"
    owner: str = "root:root"
    defer: bool = False

    @property
    def where(self) -> str:
        label = self.path if self.type == "file" else self.filename
        return "parts[%d] (%s%s)" % (self.index, self.type, " %r" % label if label else "")


@dataclasses.dataclass
class MimePart:
    """A part as sent: MIME subtype, filename and the final text."""

    type: str
    subtype: str
    filename: str
    text: str
    source: str

    @property
    def size(self) -> int:
        return len(self.text.encode("utf-8"))


@dataclasses.dataclass
class UserData:
    """The built user-data.

    ``data`` is what the cloud must receive (gzip or plain multipart bytes), ``base64`` its
    base64 text (what OpenStack and EC2 APIs take), ``sizes`` every size in bytes, ``parts`` the
    MIME parts in order and ``files`` the files written through write_files.
    """

    data: bytes
    base64: str
    compressed: bool
    sizes: dict[str, int | None]
    parts: list[dict[str, Any]]
    files: list[dict[str, Any]]

    def to_dict(self, include_data: bool = False) -> dict[str, Any]:
        """The result as plain data; raw bytes only on request (Ansible variables cannot hold bytes)."""
        result: dict[str, Any] = {
            "base64": self.base64,
            "compressed": self.compressed,
            "sizes": dict(self.sizes),
            "parts": [dict(part) for part in self.parts],
            "files": [dict(entry) for entry in self.files],
        }
        if include_data:
            result["data"] = self.data
        return result


# -- validation ---------------------------------------------------------------------------


def _check_bool(raw: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise UserDataError("%s: %s must be true or false, got %r" % (where, key, value))
    return value


def normalize_parts(parts: Any) -> list[Part]:
    """Validate the input parts and fill in defaults; raise UserDataError naming part and field."""
    if not isinstance(parts, (list, tuple)):
        raise UserDataError("user-data parts must be a list of dicts, got %s" % type(parts).__name__)
    if not parts:
        raise UserDataError("user-data parts: the list is empty, give at least one part")
    normalized = [_normalize_part(index, raw) for index, raw in enumerate(parts)]
    width = max(2, len(str(len(normalized))))
    taken: dict[str, str] = {WRITE_FILES_FILENAME: "the generated write_files part"}
    paths: dict[str, str] = {}
    for part in normalized:
        if part.type == "file":
            if part.path in paths:
                raise UserDataError("%s: path %s is also written by %s" % (part.where, part.path, paths[part.path]))
            paths[str(part.path)] = part.where
            continue
        if part.filename is None:
            part.filename = "part-%0*d.%s" % (width, part.index + 1, PART_TYPES[part.type][1])  # type: ignore[index]
        if part.filename in taken:
            # cloud-init stores scripts under their filename: a second one would replace the first.
            raise UserDataError("%s: filename %r is already used by %s; filenames must be unique"
                                % (part.where, part.filename, taken[part.filename]))
        taken[part.filename] = part.where
    return normalized


def _normalize_part(index: int, raw: Any) -> Part:
    where = "parts[%d]" % index
    if not isinstance(raw, Mapping):
        raise UserDataError("%s: each part must be a dict with type and content, got %s" % (where, type(raw).__name__))
    part_type = raw.get("type")
    if part_type not in PART_TYPES:
        raise UserDataError("%s: type must be one of %s, got %r" % (where, ", ".join(PART_TYPES), part_type))
    where = "parts[%d] (%s)" % (index, part_type)
    allowed = _ALLOWED_KEYS.get(part_type, _MIME_PART_KEYS)
    unknown = sorted(str(key) for key in raw if key not in allowed)
    if unknown:
        raise UserDataError("%s: unknown field%s %s; a %s part takes %s"
                            % (where, "s" if len(unknown) > 1 else "", ", ".join(unknown), part_type, ", ".join(sorted(allowed))))
    content = raw.get("content")
    if content is None:
        raise UserDataError("%s: content is missing" % where)
    if not isinstance(content, str):
        raise UserDataError("%s: content must be a string, got %s" % (where, type(content).__name__))
    part = Part(index=index, type=part_type, content=content,
                template=_check_bool(raw, "template", True, where), strip=_check_bool(raw, "strip", True, where))
    if part_type == "file":
        _normalize_file(part, raw, where)
    elif raw.get("filename") is not None:
        filename = raw["filename"]
        if not isinstance(filename, str) or not filename or _BAD_FILENAME.search(filename):
            raise UserDataError("%s: filename must be a plain file name (no '/', quotes or control characters), got %r"
                                % (where, filename))
        part.filename = filename
    return part


def _normalize_file(part: Part, raw: Mapping[str, Any], where: str) -> None:
    path = raw.get("path")
    if not isinstance(path, str) or not path.startswith("/") or "\n" in path or "\x00" in path:
        raise UserDataError("%s: path must be the absolute path of the file on the worker, got %r" % (where, path))
    part.path = path
    permissions = raw.get("permissions", "0644")
    if isinstance(permissions, int) and not isinstance(permissions, bool):
        raise UserDataError("%s: permissions must be a quoted octal string like '0644', got the number %d "
                            "(YAML reads an unquoted 0644 as the number 420)" % (where, permissions))
    if not isinstance(permissions, str) or not _PERMISSIONS.match(permissions):
        raise UserDataError("%s: permissions must be an octal string like '0644', got %r" % (where, permissions))
    part.permissions = permissions
    owner = raw.get("owner", "root:root")
    if not isinstance(owner, str) or not _OWNER.match(owner):
        raise UserDataError("%s: owner must be 'user' or 'user:group', got %r" % (where, owner))
    part.owner = owner
    part.defer = _check_bool(raw, "defer", False, where)


# -- rendering ----------------------------------------------------------------------------


def _jinja_environment() -> Any:
    try:
        # pylint: disable-next=import-outside-toplevel
        from jinja2.sandbox import SandboxedEnvironment
        from jinja2 import StrictUndefined  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    # trim_blocks as ansible.builtin.template does, so templates written for Ansible render alike.
    return SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, trim_blocks=True, autoescape=False)


class _Renderer:
    """Renders part templates with one context; the environment is created on first need."""

    def __init__(self, context: Mapping[str, Any] | None) -> None:
        if context is not None and not isinstance(context, Mapping):
            raise UserDataError("the user-data context must be a dict of template variables, got %s" % type(context).__name__)
        self.context = dict(context or {})
        self.environment: Any = None

    def render(self, part: Part) -> str:
        text = part.content
        # Text without Jinja markers renders to itself: no need for jinja2 on this host then.
        if not part.template or not any(marker in text for marker in _TEMPLATE_MARKERS):
            return str(text)
        if self.environment is None:
            self.environment = _jinja_environment()
            if self.environment is None:
                raise UserDataError("%s: the content is a Jinja template but jinja2 is not installed on this host; "
                                    "install jinja2 or set template: false" % part.where)
        # pylint: disable-next=import-outside-toplevel
        from jinja2 import exceptions as jinja_errors

        try:
            return str(self.environment.from_string(str(text)).render(self.context))
        except jinja_errors.UndefinedError as exc:
            raise UserDataError("%s: undefined template variable: %s (the context has: %s)"
                                % (part.where, exc.message, ", ".join(sorted(map(str, self.context))) or "nothing")) from None
        except jinja_errors.TemplateSyntaxError as exc:
            raise UserDataError("%s: template syntax error on line %s: %s" % (part.where, exc.lineno, exc.message)) from None
        except jinja_errors.SecurityError as exc:
            raise UserDataError("%s: the template does something the sandbox forbids: %s" % (part.where, exc)) from None
        except Exception as exc:  # pylint: disable=broad-exception-caught
            raise UserDataError("%s: the template failed to render: %s: %s" % (part.where, type(exc).__name__, exc)) from None


# -- stripping ----------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    # Only "\n" separates lines: str.splitlines() would also split on \r, \f, \x1c, \u2028 ...
    # and heredoc bodies must come out byte for byte.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


_HEREDOC_WORD = re.compile(r"[ \t]*((?:'[^']*'|\"(?:[^\"\\]|\\.)*\"|\\.|[^\s;&|<>()'\"\\])+)")


def _heredoc_at(line: str, start: int) -> tuple[int, tuple[str, bool] | None]:
    """At '<<' outside quotes: return (index after the operator and word, (delimiter, strip_tabs))."""
    index = start + 2
    strip_tabs = line.startswith("-", index)
    if strip_tabs:
        index += 1
    match = _HEREDOC_WORD.match(line, index)
    if not match:
        return index, None
    # The delimiter is the word with its quoting removed: 'EOF', "EOF", \EOF and E"O"F all mean EOF.
    word = re.sub(r"\\(.)", r"\1", match.group(1).replace("'", "").replace('"', ""))
    return match.end(), (word, strip_tabs)


def _scan_shell_line(line: str, quote: str | None) -> tuple[str | None, bool, list[tuple[str, bool]]]:
    """Follow quotes through one line of shell.

    Returns (the quote still open at the end of the line or None, whether the line ends in a
    backslash continuation, the heredocs it starts). A mistake here errs towards keeping lines:
    a quote thought open or a heredoc thought started keeps lines, never drops one.
    """
    heredocs: list[tuple[str, bool]] = []
    index = 0
    length = len(line)
    while index < length:
        char = line[index]
        if quote is not None:
            if char == "\\" and quote != "'":
                index += 2
                continue
            if (quote in ("'", "$'") and char == "'") or char == quote:
                quote = None
            index += 1
            continue
        if char == "\\":
            if index == length - 1:
                return None, True, heredocs
            index += 2
            continue
        if char in ("'", '"', "`"):
            quote = char
        elif char == "$" and line.startswith("'", index + 1):
            quote = "$'"
            index += 1
        elif char == "#" and (index == 0 or line[index - 1] in " \t;&|()"):
            break
        elif line.startswith("<<", index) and not line.startswith("<<<", index) and (index == 0 or line[index - 1] != "<"):
            index, heredoc = _heredoc_at(line, index)
            if heredoc:
                heredocs.append(heredoc)
            continue
        index += 1
    return quote, False, heredocs


def strip_shell(text: str, boothook: bool = False) -> str:
    """Drop blank lines and full-line comments of a shell script, changing nothing it does.

    Kept: the ``#!`` first line (and a ``#cloud-boothook`` line before it in a boothook),
    heredoc bodies and their terminators byte for byte, lines inside a quoted string that spans
    lines, and the line after a backslash continuation.
    """
    kept: list[str] = []
    quote: str | None = None
    continued = False
    pending: list[tuple[str, bool]] = []
    heredoc: tuple[str, bool] | None = None
    header = True
    for line in _lines(text):
        if heredoc is not None:
            kept.append(line)
            delimiter, strip_tabs = heredoc
            if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                heredoc = pending.pop(0) if pending else None
            continue
        if header:
            # The interpreter line must be the very first line: blank lines before it go.
            if not line.strip():
                continue
            if line.startswith("#!") or (boothook and not kept and line.rstrip() == "#cloud-boothook"):
                kept.append(line)
                header = not line.startswith("#!")
                continue
            header = False
        if quote is None and not continued:
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
        kept.append(line)
        quote, continued, started = _scan_shell_line(line, quote)
        pending.extend(started)
        # A heredoc body starts after the line that ends the command, continuation included.
        if pending and quote is None and not continued:
            heredoc = pending.pop(0)
    return _join(kept)


def strip_ini(text: str) -> str:
    """Drop blank lines and ``#``/``;`` comment lines (µCernVM and amiconfig sections)."""
    return _join([line for line in _lines(text) if line.strip() and not line.lstrip().startswith(("#", ";"))])


def strip_include(text: str) -> str:
    """Drop blank and comment lines of an include list, keeping ``#include``/``#include-once`` directives."""
    return _join([line for line in _lines(text) if line.strip() and (not line.startswith("#") or line.lower().startswith("#include"))])


def _yaml() -> Any:
    try:
        import yaml  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    return yaml


def parse_cloud_config(text: str, where: str) -> dict[str, Any]:
    """Parse cloud-config text; it must be a YAML mapping."""
    yaml = _yaml()
    if yaml is None:
        raise UserDataError("%s: PyYAML is needed to check cloud-config but is not installed on this host" % where)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Only the position: the problem line could hold a secret rendered from the context.
        mark = getattr(exc, "problem_mark", None)
        position = " on line %d, column %d" % (mark.line + 1, mark.column + 1) if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UserDataError("%s: the rendered cloud-config is not valid YAML%s: %s" % (where, position, problem)) from None
    if not isinstance(data, dict):
        raise UserDataError("%s: the rendered cloud-config must be a YAML mapping (key: value), got %s"
                            % (where, "nothing" if data is None else type(data).__name__))
    return data


def _compact_scalar(value: Any, where: str) -> str:
    if value is None or isinstance(value, (bool, int, str)):
        text = json.dumps(value, ensure_ascii=False)
        return _YAML_UNSAFE.sub(lambda match: "\\u%04x" % ord(match.group()), text) if isinstance(value, str) else text
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        # YAML 1.1 (PyYAML, cloud-init) reads 1e+16 as a string: the mantissa needs a dot.
        mantissa, exponent = (text.split("e") + [""])[:2] if "e" in text else (text, "")
        if "." not in mantissa:
            mantissa += ".0"
        return mantissa + ("e" + exponent if exponent else "")
    if isinstance(value, (datetime.date, datetime.datetime)):
        return '!!timestamp "%s"' % value.isoformat()
    raise UserDataError("%s: the cloud-config holds a %s, which compact output cannot carry; set strip: false for this part"
                        % (where, type(value).__name__))


def _compact(value: Any, where: str) -> str:
    """Flow-style YAML that is also JSON for JSON types; PyYAML reads back what it parsed."""
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            # "key":value needs no space after a quoted key; other keys are plain scalars and do.
            separator = ":" if isinstance(key, str) else ": "
            items.append(_compact_scalar(key, where) + separator + _compact(item, where))
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_compact(item, where) for item in value) + "]"
    return _compact_scalar(value, where)


def compact_cloud_config(data: Mapping[str, Any], where: str = "cloud-config") -> str:
    """``#cloud-config`` and the mapping on one line: no comments, no blank lines, block scalars kept exactly."""
    return "#cloud-config\n" + _compact(dict(data), where) + "\n"


# -- assembly -----------------------------------------------------------------------------


def _prepare_text(part: Part, rendered: str) -> str:
    if part.type == "cloud-config":
        data = parse_cloud_config(rendered, part.where)
        return compact_cloud_config(data, part.where) if part.strip else rendered
    if part.type in ("shell", "boothook"):
        text = strip_shell(rendered, boothook=part.type == "boothook") if part.strip else rendered
        executable = text
        if part.type == "boothook" and executable.startswith("#cloud-boothook"):
            # cloud-init removes this header and leading whitespace before running a boothook.
            executable = executable[len("#cloud-boothook"):].lstrip()
        if not executable.startswith("#!"):
            # cloud-init executes the file itself: without an interpreter line that fails (Exec format error).
            raise UserDataError("%s: a %s part must start with an interpreter line such as #!/bin/bash"
                                % (part.where, part.type))
        return text
    if part.type in ("ucernvm", "amiconfig"):
        text = strip_ini(rendered) if part.strip else rendered
    else:
        text = strip_include(rendered) if part.strip else rendered
    if not text.strip():
        raise UserDataError("%s: the content is empty after rendering%s" % (part.where, " and stripping" if part.strip else ""))
    return text


def write_files_entry(part: Part, content: str) -> dict[str, Any]:
    """The write_files entry of a file part: base64 content, path, permissions, owner."""
    entry: dict[str, Any] = {
        "path": part.path,
        "encoding": "b64",
        "content": base64.b64encode(content.encode("utf-8")).decode("ascii"),
        "permissions": part.permissions,
        "owner": part.owner,
    }
    if part.defer:
        entry["defer"] = True
    return entry


def render_parts(parts: Any, context: Mapping[str, Any] | None) -> tuple[list[MimePart], list[dict[str, Any]]]:
    """Validate, render and strip; return the MIME parts in order and the files written."""
    normalized = normalize_parts(parts)
    renderer = _Renderer(context)
    mime_parts: list[MimePart] = []
    entries: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    for part in normalized:
        rendered = renderer.render(part)
        if part.type == "file":
            entries.append(write_files_entry(part, rendered))
            files.append({"path": part.path, "bytes": len(rendered.encode("utf-8")), "source": part.where})
            continue
        subtype = PART_TYPES[part.type][0]  # type: ignore[index]
        mime_parts.append(MimePart(part.type, subtype, str(part.filename), _prepare_text(part, rendered), part.where))
    if entries:
        # Last, because its merge_how governs how it merges into what the parts before it gave.
        text = compact_cloud_config({"write_files": entries, "merge_how": WRITE_FILES_MERGE_HOW}, "write_files")
        mime_parts.append(MimePart("cloud-config", "cloud-config", WRITE_FILES_FILENAME, text, "the file parts"))
    return mime_parts, files


def _boundary(mime_parts: list[MimePart]) -> str:
    # Deterministic (same input, same bytes, same hash) and, being a digest of the content,
    # practically never inside it; checked anyway.
    digest = hashlib.sha256("\x00".join(part.text for part in mime_parts).encode("utf-8"))
    while True:
        boundary = "==hepinfra-%s==" % digest.hexdigest()[:16]
        if not any(boundary in part.text for part in mime_parts):
            return boundary
        digest.update(b"\x00")


def build_multipart(mime_parts: list[MimePart]) -> bytes:
    """The multipart/mixed message, in order, each part with its Content-Type and filename."""
    message = MIMEMultipart("mixed", boundary=_boundary(mime_parts))
    for part in mime_parts:
        # ASCII goes as 7bit, as cloud-init's own examples do; anything else as utf-8 in base64,
        # because cloud-init parses the message from a str, which mangles raw 8bit payloads.
        try:
            part.text.encode("ascii")
            charset = "us-ascii"
        except UnicodeEncodeError:
            charset = "utf-8"
        section = MIMEText(part.text, part.subtype, charset)
        section.add_header("Content-Disposition", "attachment", filename=part.filename)
        message.attach(section)
    return message.as_bytes()


def _gzip(data: bytes) -> bytes:
    # mtime=0: the same input gives the same bytes (stable diffs, idempotent server updates).
    return gzip.compress(data, compresslevel=9, mtime=0)


def _encoded_length(size: int) -> int:
    return 4 * ((size + 2) // 3)


def build_user_data(parts: Any, context: Mapping[str, Any] | None = None, *, limit: int | None = None,
                    limit_after_base64: bool = True, compression: bool | str = "auto") -> UserData:
    """Build the user-data of one worker.

    ``compression``: ``'auto'`` gzips when that makes the payload smaller, ``True`` always,
    ``False`` never (clouds that pass user-data on without decompressing it). ``limit`` (bytes)
    is compared with the base64 length when ``limit_after_base64`` (OpenStack, 65535), else with
    the raw length (EC2, 16384). Raises UserDataError for bad parts and when the payload does
    not fit, with every size and the largest parts in the message.
    """
    if not (compression is True or compression is False or compression == "auto"):
        raise UserDataError("compression must be %s, got %r" % (_COMPRESSION_CHOICES, compression))
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise UserDataError("limit must be a positive number of bytes or null for none, got %r" % (limit,))
    if not isinstance(limit_after_base64, bool):
        raise UserDataError("limit_after_base64 must be true or false, got %r" % (limit_after_base64,))

    mime_parts, files = render_parts(parts, context)
    plain = build_multipart(mime_parts)
    packed = _gzip(plain) if compression is not False else None
    use_gzip = packed is not None and (compression is True or len(packed) < len(plain))
    data = packed if use_gzip and packed is not None else plain
    sizes: dict[str, int | None] = {
        "plain": len(plain),
        "gzip": len(packed) if packed is not None else None,
        "final": len(data),
        "encoded": _encoded_length(len(data)),
        "limit": limit,
    }
    part_sizes = [{"type": part.type, "filename": part.filename, "bytes": part.size} for part in mime_parts]
    if limit is not None:
        measured = sizes["encoded"] if limit_after_base64 else sizes["final"]
        if measured is not None and measured > limit:
            raise UserDataError(_too_large_message(sizes, plain, compression, use_gzip, limit, limit_after_base64, mime_parts, files))
    return UserData(data=data, base64=base64.b64encode(data).decode("ascii"), compressed=use_gzip, sizes=sizes,
                    parts=part_sizes, files=[{"path": entry["path"], "bytes": entry["bytes"]} for entry in files])


def _too_large_message(sizes: dict[str, int | None], plain: bytes, compression: bool | str, compressed: bool, limit: int,
                       after_base64: bool, mime_parts: list[MimePart], files: list[dict[str, Any]]) -> str:
    counted = "after base64 encoding" if after_base64 else "raw, before base64 encoding"

    def measure(size: int) -> int:
        return _encoded_length(size) if after_base64 else size

    plain_size = len(plain)
    gzip_size = sizes["gzip"] if sizes["gzip"] is not None else len(_gzip(plain))
    sentences = [
        "user-data for this worker is %d bytes %s (sent %s), over the limit of %d bytes"
        % (measure(len(plain) if not compressed else gzip_size), counted, "gzip" if compressed else "plain", limit),
        "sizes: plain multipart %d bytes (%d after base64), gzip %d bytes (%d after base64)%s"
        % (plain_size, _encoded_length(plain_size), gzip_size, _encoded_length(gzip_size),
           ", not used because compression is off" if compression is False else ""),
    ]
    if compression is False and measure(gzip_size) <= limit:
        sentences.append("gzip would fit: allow compression if this cloud passes gzip user-data on to the guest (cloud-init reads it)")
    contributions = [(part.size, "%s %d bytes" % (part.source, part.size)) for part in mime_parts if part.filename != WRITE_FILES_FILENAME]
    contributions += [(entry["bytes"], "%s %d bytes (%d in base64)" % (entry["source"], entry["bytes"], _encoded_length(entry["bytes"])))
                      for entry in files]
    contributions.sort(key=lambda item: -item[0])
    sentences.append("largest parts: " + "; ".join(label for size, label in contributions[:3]))
    return ". ".join(sentences) + ". Move large content to an include URL or into the image, or leave parts out."
