"""A quick look: ``python -m workbench.lessons.planner [NAME ...]`` prints the plan of each
shipped architecture named (all of them by default)."""

import sys

from workbench.lessons.planner import plan, shipped_architectures

if __name__ == "__main__":  # imported (pkgutil.walk_packages), it does nothing
    for name in sys.argv[1:] or shipped_architectures():
        print(plan(name), end="\n\n")
