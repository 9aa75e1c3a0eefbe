"""Unpack the collections listed in tests/collections.txt from the `ansible` wheel on PyPI.

Usage: vendor_collections.py LIST DEST_COLLECTIONS_DIR WHEEL_CACHE_DIR
Galaxy is unreachable from the test machines; PyPI's `ansible` package bundles the
collections, so only the ones listed are unpacked (keeps the search path small).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path


def main() -> int:
    listing, dest, cache = (Path(arg) for arg in sys.argv[1:4])
    lines = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    requirement, wanted = lines[0], lines[1:]
    version = requirement.split("==", 1)[1]
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob(f"ansible-{version}-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(cache), requirement],
            check=True,
        )
        wheels = sorted(cache.glob(f"ansible-{version}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        for fqcn in wanted:
            namespace, name = fqcn.split(".")
            prefix = f"ansible_collections/{namespace}/{name}/"
            members = [n for n in names if n.startswith(prefix)]
            if not members:
                print(f"{fqcn} is not in {wheels[0].name}", file=sys.stderr)
                return 1
            target = dest / namespace / name
            if target.exists():
                shutil.rmtree(target)
            for member in members:
                wheel.extract(member, dest.parent)
            print(f"unpacked {fqcn} into {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
