"""DICOMweb access to a PACS (QIDO-RS search, WADO-RS retrieve, STOW-RS store) and the app's PACS round trip.

:class:`DicomWebClient` speaks the three DICOMweb services with ``requests`` (tested against Orthanc's
DICOMweb plugin; any PS3.18 server works: dcm4chee, Google/Azure/AWS health imaging, ...). Retrieval asks
for the stored transfer syntax (``transfer-syntax=*``) so the reader sees what the modality sent.

:func:`run_on_pacs` is the round trip: retrieve one study into a private work folder, run the app on it
and store its SR and SC back into the same study with STOW-RS. A study the app cannot report on (not
ultrasound, unreadable) stores nothing and returns its DICOM-level error.

Command line::

    busgen deploy-pacs --url http://pacs:8042/dicom-web --study 1.2.3... -m model.pt --configs inference,preset_cpu_tiny
    busgen deploy-pacs --url ... --modality US --date 20240101-20240131 -m ...   # every matching study
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["DicomWebError", "DicomWebClient", "run_on_pacs", "main"]

logger = logging.getLogger("busgen_deploy")


class DicomWebError(RuntimeError):
    """A DICOMweb request failed (HTTP status, refused instances); the message names the service and the fix."""


def _split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """Parts of a ``multipart/related`` body (RFC 2046), headers stripped."""
    boundary = None
    for piece in content_type.split(";"):
        k, _, v = piece.strip().partition("=")
        if k.lower() == "boundary":
            boundary = v.strip().strip('"')
    if not boundary:
        raise DicomWebError(f"WADO-RS answer is not multipart (Content-Type {content_type!r})")
    delim = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delim)[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        parts.append(payload)
    return parts


class DicomWebClient:
    """Minimal DICOMweb client.

    Args:
        url: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
        timeout: seconds per request.
        auth: optional ``(user, password)`` for HTTP basic authentication.
        headers: extra headers (e.g. ``{"Authorization": "Bearer ..."}``).
    """

    def __init__(self, url: str, *, timeout: float = 60.0, auth: tuple[str, str] | None = None,
                 headers: dict | None = None):
        import requests

        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if auth:
            self.session.auth = auth
        if headers:
            self.session.headers.update(headers)

    def _check(self, resp, what: str):
        if resp.status_code >= 400:
            raise DicomWebError(f"{what}: HTTP {resp.status_code} from {self.url} ({resp.text[:200].strip()}); "
                                "check the DICOMweb root URL, the credentials and that the server enables DICOMweb")
        return resp

    # ------------------------------------------------------------------ QIDO-RS
    def search_studies(self, *, modality: str | None = "US", study_date: str | None = None,
                       study_uids: Sequence[str] | None = None, limit: int | None = None) -> list[dict]:
        """QIDO-RS ``/studies``: DICOM JSON of the matching studies.

        Args:
            modality: ``ModalitiesInStudy`` (``None``: any).
            study_date: a DICOM date or range (``20240101-20240131``, ``20240101-``).
            study_uids: only these studies.
            limit: at most this many.
        """
        params: dict = {"includefield": "ModalitiesInStudy,StudyDate,NumberOfStudyRelatedInstances"}
        if modality:
            params["ModalitiesInStudy"] = modality
        if study_date:
            params["StudyDate"] = study_date
        if study_uids:
            params["StudyInstanceUID"] = ",".join(study_uids)
        if limit:
            params["limit"] = int(limit)
        resp = self._check(self.session.get(f"{self.url}/studies", params=params, timeout=self.timeout,
                                            headers={"Accept": "application/dicom+json"}), "QIDO-RS search")
        return resp.json() if resp.content else []

    @staticmethod
    def value(item: dict, tag: str, default=None):
        """First value of ``tag`` (8 hex digits) in a DICOM JSON item."""
        try:
            return item[tag]["Value"][0]
        except (KeyError, IndexError, TypeError):
            return default

    def study_uids(self, **query) -> list[str]:
        return [self.value(s, "0020000D") for s in self.search_studies(**query) if self.value(s, "0020000D")]

    def search_instances(self, study_uid: str) -> list[dict]:
        """QIDO-RS ``/studies/{uid}/instances``."""
        resp = self._check(self.session.get(f"{self.url}/studies/{study_uid}/instances", timeout=self.timeout,
                                            params={"includefield": "all"},
                                            headers={"Accept": "application/dicom+json"}), "QIDO-RS instances")
        return resp.json() if resp.content else []

    # ------------------------------------------------------------------ WADO-RS
    def retrieve_study(self, study_uid: str, dest: str | os.PathLike) -> list[Path]:
        """WADO-RS ``/studies/{uid}``: every instance of the study into ``dest`` (as stored, one file per
        instance, named by position). The folder appears complete or not at all (temporary folder + rename)."""
        dest = Path(dest)
        resp = self._check(self.session.get(
            f"{self.url}/studies/{study_uid}", timeout=self.timeout,
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}), "WADO-RS retrieve")
        parts = _split_multipart(resp.content, resp.headers.get("Content-Type", ""))
        tmp = dest.parent / f".{dest.name}.part-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            for i, payload in enumerate(parts):
                (tmp / f"{i:05d}.dcm").write_bytes(payload)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return sorted(dest.glob("*.dcm"))

    # ------------------------------------------------------------------ STOW-RS
    def store(self, files: Iterable[str | os.PathLike], study_uid: str | None = None) -> dict:
        """STOW-RS the DICOM ``files`` (one request). Raises :class:`DicomWebError` when any instance is refused."""
        boundary = f"busgen-{uuid.uuid4().hex}"
        body = bytearray()
        n = 0
        for f in files:
            body += (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode()
            body += Path(f).read_bytes() + b"\r\n"
            n += 1
        body += f"--{boundary}--\r\n".encode()
        url = f"{self.url}/studies" + (f"/{study_uid}" if study_uid else "")
        resp = self._check(self.session.post(
            url, data=bytes(body), timeout=self.timeout,
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                     "Accept": "application/dicom+json"}), "STOW-RS store")
        answer = resp.json() if resp.content else {}
        failed = answer.get("00081198", {}).get("Value", []) if isinstance(answer, dict) else []
        if failed:
            raise DicomWebError(f"STOW-RS: the server refused {len(failed)} of {n} instance(s)")
        return answer


def run_on_pacs(client: DicomWebClient, study_uid: str, model_config=None, *, workdir: str | os.PathLike | None = None,
                classifier=None, max_frames: int = 8, store: bool = True, keep: bool = False) -> dict:
    """Retrieve ``study_uid``, run the app on it and (``store=True``) STOW its SR and SC back.

    Returns ``{"study", "status": "stored"|"written"|"failed", "score", "decision", "sr", "sc", "error"}``.
    The retrieved DICOM (identifiable) lives in a private temporary folder removed afterwards unless ``keep``.
    """
    from .app import run_app
    from .study import study_label

    label = study_label(study_uid)
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="busgen-deploy-"))
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    try:
        client.retrieve_study(study_uid, base / "in" / label)
        report = run_app(base / "in" / label, base / "out", model_config, classifier=classifier, max_frames=max_frames)
        if report.get("failed"):
            f = report["failed"][0]
            return {"study": label, "status": "failed", "code": f["code"], "error": f["message"]}
        out = base / "out" / label
        summary = json.loads((out / "result.json").read_text())
        res = {"study": label, "status": "written", "score": summary["score"], "decision": summary["decision"]}
        if store:
            client.store([out / "sr.dcm", out / "sc.dcm"], study_uid=study_uid)
            res["status"] = "stored"
        return res
    finally:
        if not keep and not workdir:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``busgen deploy-pacs``: run the app on PACS studies and store the results back (DICOMweb)."""
    p = argparse.ArgumentParser(prog="busgen deploy-pacs", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    p.add_argument("--study", action="append", default=[], metavar="UID", help="study to run (repeatable)")
    p.add_argument("--modality", default="US", help="ModalitiesInStudy of the query (default US)")
    p.add_argument("--date", help="StudyDate or range of the query, e.g. 20240101-20240131")
    p.add_argument("--limit", type=int, help="at most this many studies from the query")
    p.add_argument("--no-store", action="store_true", help="run but do not store the results back")
    p.add_argument("--user", help="HTTP basic user (password from $BUSGEN_PACS_PASSWORD)")
    p.add_argument("-m", "--model", default=os.environ.get("HOLOSCAN_MODEL_PATH"),
                   help="classifier checkpoint or bundle folder (as busgen deploy-run)")
    p.add_argument("--configs", help="bundle configs the checkpoint was trained with")
    p.add_argument("--threshold", type=float, help="operating point (default 0.5)")
    p.add_argument("--max-frames", type=int, default=8)
    args = p.parse_args(list(argv) if argv is not None else None)
    from .app import model_config_from_path
    from .model import BundleClassifier

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    auth = (args.user, os.environ.get("BUSGEN_PACS_PASSWORD", "")) if args.user else None
    client = DicomWebClient(args.url, auth=auth)
    try:
        cfg = model_config_from_path(args.model, configs=args.configs, threshold=args.threshold)
        classifier = BundleClassifier(cfg)
        uids = args.study or client.study_uids(modality=args.modality, study_date=args.date, limit=args.limit)
    except (FileNotFoundError, ValueError, DicomWebError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    status = 0
    for uid in uids:
        try:
            res = run_on_pacs(client, uid, cfg, classifier=classifier, max_frames=args.max_frames,
                              store=not args.no_store)
        except DicomWebError as err:
            res = {"status": "failed", "error": str(err)}
        print(json.dumps(res))
        status = status or (2 if res["status"] == "failed" else 0)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
