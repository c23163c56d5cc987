"""An environment fingerprint for a training run, to be sealed beside its outputs.

``worm-fs seal-env PATH`` writes this JSON to PATH inside a mount; like any file there it
is sealed when closed, so the description of how the artifacts were produced is as
immutable as the artifacts. Nothing here is secret-bearing by design: environment
variables are not recorded.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _git(cwd: Path) -> dict[str, Any] | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True,
                               text=True, timeout=30)
        remote = subprocess.run(["git", "config", "--get", "remote.origin.url"], cwd=cwd,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip()),
            "remote": remote.stdout.strip() or None}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _accelerators() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def fingerprint(cwd: Path | None = None, label: str | None = None) -> dict[str, Any]:
    cwd = cwd or Path.cwd()
    packages = sorted(
        {(d.metadata["Name"] or "?", d.version) for d in importlib.metadata.distributions()},
        key=lambda p: p[0].lower(),
    )
    return {
        "schema": "worm-fs/environment/v1",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "user": {"uid": os.getuid(), "gid": os.getgid()},
        "python": {"version": sys.version.split()[0], "implementation":
                   platform.python_implementation(), "executable": sys.executable},
        "packages": {name: version for name, version in packages},
        "platform": {"system": platform.system(), "release": platform.release(),
                     "machine": platform.machine(), "cpu": _cpu_model(),
                     "cpus": os.cpu_count(), "memory_bytes": _memory_bytes(),
                     "accelerators": _accelerators()},
        "git": _git(cwd),
        "cwd": str(cwd),
        "label": label,
    }
