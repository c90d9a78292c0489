"""A throw-away Orthanc PACS on loopback, for tests, benchmarks and trying the round trip on a laptop.

``OrthancServer`` starts the ``Orthanc`` binary (Debian packages ``orthanc`` + ``orthanc-dicomweb``;
``bash .ci/setup.d/orthanc.sh`` installs them) with a temporary storage folder, HTTP on a free loopback port,
remote access off, its DICOM listener off (the app talks DICOMweb), and the DICOMweb plugin; it stops it
(and removes the storage unless asked to keep it) on exit::

    with OrthancServer() as pacs:
        client = DicomWebClient(pacs.dicomweb_url)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["OrthancUnavailable", "OrthancServer", "find_orthanc", "DICOMWEB_PLUGIN"]

DICOMWEB_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins", "/usr/local/share/orthanc/plugins")
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"


class OrthancUnavailable(RuntimeError):
    """Orthanc (or its DICOMweb plugin) is not installed or did not start; the message says how to fix it."""


def find_orthanc() -> tuple[str, str]:
    """``(Orthanc binary, DICOMweb plugin)`` paths, or :class:`OrthancUnavailable`."""
    exe = shutil.which("Orthanc")
    if not exe:
        raise OrthancUnavailable("the Orthanc binary is not installed (apt-get install orthanc orthanc-dicomweb, or "
                                 "bash .ci/setup.d/orthanc.sh)")
    for d in DICOMWEB_PLUGIN_DIRS:
        p = Path(d) / DICOMWEB_PLUGIN
        if p.is_file():
            return exe, str(p)
    raise OrthancUnavailable(f"Orthanc's DICOMweb plugin ({DICOMWEB_PLUGIN}) is not installed "
                             "(apt-get install orthanc-dicomweb)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    """Context manager running one Orthanc (see the module docstring).

    Args:
        storage: storage folder (default: a new temporary folder, removed on exit).
        startup_timeout: seconds to wait for the REST API.
    """

    def __init__(self, storage: str | os.PathLike | None = None, startup_timeout: float = 60.0):
        self._own_storage = storage is None
        self.storage = Path(storage) if storage else Path(tempfile.mkdtemp(prefix="busgen-orthanc-"))
        self.startup_timeout = startup_timeout
        self.http_port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self) -> "OrthancServer":
        exe, plugin = find_orthanc()
        self.http_port = _free_port()
        cfg = {
            "Name": "busgen-test",
            "StorageDirectory": str(self.storage / "db"),
            "IndexDirectory": str(self.storage / "db"),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "HttpServerEnabled": True,
            "StableAge": 1,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "StudiesMetadata": "Full"},
        }
        cfg_path = self.storage / "orthanc.json"
        self.storage.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(json.dumps(cfg, indent=1))
        log = open(self.storage / "orthanc.log", "wb")
        self.proc = subprocess.Popen([exe, str(cfg_path)], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        import requests

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.storage / "orthanc.log").read_text(errors="replace")[-800:]
                self.stop()
                raise OrthancUnavailable(f"Orthanc exited with status {self.proc.returncode} at start-up: {tail}")
            try:
                if requests.get(f"{self.url}/system", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise OrthancUnavailable(f"Orthanc did not answer on {self.url} within {self.startup_timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._own_storage:
            shutil.rmtree(self.storage, ignore_errors=True)

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
