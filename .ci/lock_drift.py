"""Print which installed packages differ from the lock file: what `make test-latest` tested beyond the lock.

Usage: python .ci/lock_drift.py requirements-lock.txt   (run with the interpreter of the venv to compare)
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line.strip())
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def main(lock_path: str) -> int:
    locked = locked_versions(Path(lock_path))
    installed = {normalise(d.metadata["Name"]): d.version for d in metadata.distributions()}
    changed = sorted((name, locked[name], installed[name]) for name in locked.keys() & installed.keys()
                     if installed[name].split("+")[0] != locked[name].split("+")[0])
    added = sorted(set(installed) - set(locked) - {"pip", "setuptools", "devide", "wheel"})
    if not changed and not added:
        print("lock drift: the newest allowed versions are the locked ones")
        return 0
    print(f"lock drift: {len(changed)} package(s) newer than {lock_path}, {len(added)} not in it")
    for name, old, new in changed:
        print(f"  {name:32s} {old:>14s} -> {new}")
    for name in added:
        print(f"  {name:32s} {'(not locked)':>14s} -> {installed[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "requirements-lock.txt"))
