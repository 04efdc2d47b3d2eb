#!/usr/bin/env python3
"""Fails when the committed stubs in authgate_plugin/_proto/ are stale.

Regenerates the stubs from proto/authgate/plugin/v1/plugin.proto into a temporary
directory with ``generate.sh`` and compares them byte for byte with the committed ones.
Exit status: 0 when they match, 1 when they differ (or generation failed).

Run it as ``python3 sdk/python/check_generated.py`` from anywhere; it needs
grpcio-tools at the version pinned in generate.sh.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMITTED = HERE / "authgate_plugin" / "_proto"
GENERATED_FILES = ("plugin_pb2.py", "plugin_pb2.pyi", "plugin_pb2_grpc.py")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            ["bash", str(HERE / "generate.sh"), tmp],
            env={**os.environ, "PYTHON": sys.executable},
        )
        if result.returncode != 0:
            print("check_generated: generate.sh failed", file=sys.stderr)
            return 1
        stale = []
        for name in GENERATED_FILES:
            fresh = (Path(tmp) / name).read_text()
            committed_path = COMMITTED / name
            committed = committed_path.read_text() if committed_path.exists() else ""
            if fresh != committed:
                stale.append(name)
                diff = difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    fresh.splitlines(keepends=True),
                    fromfile=f"committed/{name}",
                    tofile=f"regenerated/{name}",
                    n=1,
                )
                sys.stderr.writelines(list(diff)[:40])
    if stale:
        print(
            f"check_generated: stale stubs: {', '.join(stale)}; run sdk/python/generate.sh",
            file=sys.stderr,
        )
        return 1
    print("check_generated: stubs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
