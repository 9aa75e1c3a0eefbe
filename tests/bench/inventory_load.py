"""Load one inventory source the way ansible-playbook does and print host count and seconds.

Usage: inventory_load.py SOURCE flush|cache  (run by bench_inventory.py in a fresh process)
"""

from __future__ import annotations

import sys
import time

from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader


def main() -> int:
    source, mode = sys.argv[1:3]
    init_plugin_loader()
    started = time.perf_counter()
    inventory = InventoryManager(loader=DataLoader(), sources=[source], cache=mode != "flush")
    print(f"{len(inventory.hosts)} {time.perf_counter() - started:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
