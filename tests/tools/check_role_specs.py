"""Check that every role's meta/argument_specs.yml documents exactly its defaults, key for key.

Also checks that each documented default equals the value in defaults/main.yml, and that
every role has a README and at least one molecule scenario. Exit 1 on any mismatch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def check_role(role: Path) -> list[str]:
    problems = []
    defaults_file = role / "defaults" / "main.yml"
    specs_file = role / "meta" / "argument_specs.yml"
    if not specs_file.exists():
        return [f"{role.name}: meta/argument_specs.yml is missing"]
    defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else {}
    defaults = defaults or {}
    specs = yaml.safe_load(specs_file.read_text())["argument_specs"]
    options = (specs.get("main") or {}).get("options") or {}
    for name in sorted(set(defaults) - set(options)):
        problems.append(f"{role.name}: {name} is in defaults/main.yml but not in argument_specs (main)")
    for name in sorted(set(options) - set(defaults)):
        if not options[name].get("required"):
            problems.append(f"{role.name}: {name} is documented but has no default in defaults/main.yml")
    for name in sorted(set(options) & set(defaults)):
        if "default" in options[name] and options[name]["default"] != defaults[name]:
            problems.append(
                f"{role.name}: {name} documents default {options[name]['default']!r} but defaults/main.yml has {defaults[name]!r}"
            )
        if not name.startswith(role.name + "_"):
            problems.append(f"{role.name}: public variable {name} must start with {role.name}_")
    if not (role / "README.md").exists():
        problems.append(f"{role.name}: README.md is missing")
    if not list(role.glob("molecule/*/molecule.yml")):
        problems.append(f"{role.name}: no molecule scenario")
    return problems


def main() -> int:
    roles = sorted(p for p in Path("roles").iterdir() if p.is_dir()) if Path("roles").is_dir() else []
    problems = [problem for role in roles for problem in check_role(role)]
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"role specs: {len(roles)} roles checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
