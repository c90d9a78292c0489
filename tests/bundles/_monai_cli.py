"""Running a bundle the way its docs say, for the bundle tests: ``python -m monai.bundle run`` in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_env() -> dict:
    """One thread, unbuffered output, the repository on the path."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


test_env.__test__ = False  # a helper, not a test


def monai_bundle_run(bundle: Path, config_files: list, overrides: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` (``fire`` parses the command line); without ``fire`` installed the same
    ``monai.bundle.run`` is called with the same arguments. Asserts exit status 0 (the output tail on failure)."""
    files = [str(f) for f in config_files]
    kwargs = {"config_file": files if len(files) > 1 else files[0], "bundle_root": str(bundle), **overrides}
    if importlib.util.find_spec("fire") is not None:
        cmd = [sys.executable, "-m", "monai.bundle", "run"]
        for key, value in kwargs.items():
            cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    else:
        cmd = [sys.executable, "-c", "import json, sys; from monai.bundle import run; run(**json.loads(sys.argv[1]))",
               json.dumps(kwargs)]
    proc = subprocess.run(cmd, cwd=ROOT, env=test_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
