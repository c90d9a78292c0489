"""Where jobs run: in this process, or in worker processes that each handle one file at a time so that a
file over ``file_timeout`` or a decoder that crashes costs one reject (``timeout`` / ``worker_crash``), not the run.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from .classify import scan_file
from .decode import decode_file
from .records import _reject, _short_tb, file_id_of
from .settings import IngestSettings
from .write import _rel_frame_dir, _remove_outputs


__all__: list[str] = []  # the package's own plumbing; nothing public


def _run_job(job: tuple) -> dict:
    import logging

    kind, args = job
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # corrupt files make pydicom log their (possibly identifying) values
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "scan":
                return scan_file(*args)
            return decode_file(*args)
    finally:
        logger.setLevel(level)


def _job_failure(job: tuple, reason: str, detail: str, settings: IngestSettings) -> dict:
    kind, args = job
    if kind == "scan":
        _, rel, fingerprint, _ = args
        return _reject(file_id_of(rel, settings.salt), fingerprint, reason, detail)
    path, record, out_dir, _ = args
    _remove_outputs(Path(out_dir), _rel_frame_dir(record["info"]), record["info"]["sop_hash"])
    return _reject(record["file_id"], record["fingerprint"], reason, detail, info=record["info"])


def _worker_main(conn) -> None:  # pragma: no cover - runs in a child process
    import logging

    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    while True:
        try:
            job = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if job is None:
            return
        index, payload = job
        try:
            result = _run_job(payload)
        except BaseException as err:  # noqa: BLE001
            result = {"__error__": _short_tb(err)}
        conn.send((index, result))


def _worker_context():
    """``forkserver`` where it exists (a clean server process started once per session, each worker a cheap
    fork of it, so isolating every run costs milliseconds), else ``spawn``. Never plain ``fork``: the caller
    may hold threads (torch, tqdm) that a forked child would inherit half-way."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["busgen_monai.data.ingest"])
        return ctx
    return mp.get_context("spawn")


def _exit_status(code: int | None) -> str:
    """``exit code -11, SIGSEGV`` for a process killed by a signal, ``exit code 3`` otherwise."""
    if code is not None and code < 0:
        try:
            return f"exit code {code}, {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}"


class _Pool:
    """Processes that each decode one file at a time; a file over ``timeout`` seconds or a crashing decoder
    kills only its worker (replaced by a fresh one) and becomes a reject."""

    def __init__(self, workers: int, timeout: float | None):
        self.ctx = _worker_context()
        self.timeout = timeout
        self.workers = [self._start() for _ in range(max(1, workers))]

    def _start(self):
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=_worker_main, args=(child,), daemon=True)
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "job": None, "start": 0.0}

    def _replace(self, w) -> None:
        try:
            w["proc"].kill()
            w["proc"].join(5)
        except Exception:  # noqa: BLE001
            pass
        w["conn"].close()
        fresh = self._start()
        w.update(fresh)

    def run(self, jobs: Sequence[tuple], settings: IngestSettings) -> Iterator[tuple[int, dict]]:
        from multiprocessing.connection import wait

        pending = list(range(len(jobs)))[::-1]
        busy: dict[int, dict] = {}
        while pending or busy:
            for w in self.workers:
                if w["job"] is None and pending:
                    idx = pending.pop()
                    w["job"], w["start"] = idx, time.monotonic()
                    w["conn"].send((idx, jobs[idx]))
                    busy[id(w)] = w
            wait_for = None
            if self.timeout:
                now = time.monotonic()
                wait_for = max(0.0, min(w["start"] + self.timeout - now for w in busy.values()))
            ready = wait([w["conn"] for w in busy.values()], timeout=wait_for)
            by_conn = {id(w["conn"]): w for w in busy.values()}
            for conn in ready:
                w = by_conn[id(conn)]
                idx = w["job"]
                try:
                    got_idx, result = conn.recv()
                    if "__error__" in result:
                        result = _job_failure(jobs[idx], "internal_error", result["__error__"], settings)
                except (EOFError, OSError):
                    w["proc"].join(5)  # its pipe closes before it is reaped: wait for the exit status
                    code = _exit_status(w["proc"].exitcode)
                    self._replace(w)
                    result = _job_failure(jobs[idx], "worker_crash",
                                          f"the worker process died while decoding ({code}); the file "
                                          "crashes the decoder", settings)
                w["job"] = None
                busy.pop(id(w), None)
                yield idx, result
            if self.timeout:
                now = time.monotonic()
                for w in list(busy.values()):
                    if w["job"] is not None and now - w["start"] > self.timeout:
                        idx = w["job"]
                        self._replace(w)
                        w["job"] = None
                        busy.pop(id(w), None)
                        yield idx, _job_failure(jobs[idx], "timeout", f"processing took longer than "
                                                                      f"file_timeout={self.timeout:g} s", settings)

    def close(self) -> None:
        for w in self.workers:
            try:
                w["conn"].send(None)
            except Exception:  # noqa: BLE001
                pass
        for w in self.workers:
            w["proc"].join(5)
            if w["proc"].is_alive():
                w["proc"].kill()
                w["proc"].join(5)
            w["conn"].close()


class _Runner:
    """Runs jobs in this process (``isolate=False``, ``workers <= 1`` and no timeout) or in one :class:`_Pool`, started on first
    use and shared by the scan and decode phases (starting worker processes costs about a second)."""

    def __init__(self, settings: IngestSettings, workers: int, timeout: float | None, progress: bool,
                 isolate: bool = True):
        self.settings = settings
        self.isolate = isolate
        self.workers = max(1, int(workers))
        self.timeout = timeout
        self.progress = progress
        self.pool: _Pool | None = None

    def run(self, jobs: Sequence[tuple], desc: str) -> Iterator[tuple[int, dict]]:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=desc, unit="file", disable=not self.progress or not jobs, leave=False)
        try:
            if not jobs:
                return
            if self.workers <= 1 and not self.timeout and not self.isolate:
                for i, job in enumerate(jobs):
                    try:
                        result = _run_job(job)
                    except Exception as err:  # noqa: BLE001
                        result = _job_failure(job, "internal_error", _short_tb(err), self.settings)
                    bar.update(1)
                    yield i, result
                return
            if self.pool is None:
                self.pool = _Pool(self.workers, self.timeout)
            for i, result in self.pool.run(jobs, self.settings):
                bar.update(1)
                yield i, result
        finally:
            bar.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
