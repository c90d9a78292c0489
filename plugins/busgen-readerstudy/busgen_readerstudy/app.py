"""The reader-study web app (Flask), served by one process (waitress, a pure-Python production WSGI server).

Pages: ``/`` (reader), ``/admin`` (coordinator). Everything the pages need is in this package's ``static/``
folder (no CDN, no web fonts), so the study runs on a network without internet. A Content-Security-Policy of
``default-src 'self'`` makes the browser refuse anything from elsewhere.

API (JSON; every refusal is a JSON ``{"error": "..."}`` with a 4xx status):

==========================  =====================================================================================
``POST /api/login``          ``{"code"}`` -> sets the reader cookie; 401 for an unknown code
``POST /api/logout``         clears it
``GET  /api/state``          the reader's progress and the next image (``next`` is null when finished)
``GET  /image/<id>``         an image, only to a reader it is assigned to (403 otherwise)
``POST /api/answer``         ``{"image_id", "call": real|generated, "confidence": 1-5, "pathology"?, "birads"?,
                             "elapsed_ms"?}``; 409 when this reader already answered the image, 400 out of range
``POST /api/admin/login``    ``{"code"}`` (the admin code) -> admin cookie
``GET  /api/admin/progress`` answers per reader, last answer time, refused requests
``GET  /api/admin/export.json`` / ``export.csv``  every answer with the image's truth and labels
==========================  =====================================================================================

Readers are identified by their code (cookie ``rs_reader`` or header ``X-Reader-Code``); the database and the
exports hold reader names, never codes.
"""

from __future__ import annotations

import argparse
import csv
import hmac
import io
import logging
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request, send_file, send_from_directory

from .build import load_study
from .store import AnswerStore, DuplicateAnswer

__all__ = ["create_app", "serve", "main", "EXPORT_FIELDS"]

logger = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
EXPORT_FIELDS = ("reader", "image_id", "position", "truth", "call", "correct", "confidence", "pathology",
                 "requested_pathology", "birads", "requested_birads", "elapsed_ms", "answered_at")
_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def create_app(study_dir: str | Path, db_path: str | Path | None = None) -> Flask:
    """Flask app serving the study in ``study_dir``; answers go to ``db_path`` (default ``study_dir/answers.sqlite``)."""
    study_dir = Path(study_dir).resolve()
    study = load_study(study_dir)
    store = AnswerStore(db_path or study_dir / "answers.sqlite")
    items = {it["id"]: it for it in study["items"]}
    readers = {r["code"]: r for r in study["readers"]}
    positions = {r["name"]: {image_id: i for i, image_id in enumerate(r["order"])} for r in study["readers"]}
    pathologies = set(study.get("pathologies") or [])
    birads_values = list(study.get("birads_values") or [])
    admin_code = str(study["admin_code"])

    app = Flask(__name__, static_folder=None)
    app.config["STUDY"] = study
    app.config["STORE"] = store

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = _CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["X-Frame-Options"] = "DENY"
        if request.path.startswith("/api/"):
            resp.headers["Cache-Control"] = "no-store"
        return resp

    def _reader() -> dict | None:
        code = request.headers.get("X-Reader-Code") or request.cookies.get("rs_reader") or ""
        return readers.get(code)

    def _is_admin() -> bool:
        code = request.headers.get("X-Admin-Code") or request.cookies.get("rs_admin") or ""
        return hmac.compare_digest(code.encode(), admin_code.encode())

    def _state(reader: dict) -> dict[str, Any]:
        done = store.answered(reader["name"])
        nxt = next((i for i in reader["order"] if i not in done), None)
        return {"reader": reader["name"], "n_total": len(reader["order"]), "n_done": len(done),
                "next": None if nxt is None else {"image_id": nxt, "position": positions[reader["name"]][nxt]},
                "pathologies": sorted(pathologies), "birads_values": birads_values}

    def _unknown_reader() -> tuple[Response, int]:
        if request.headers.get("X-Reader-Code") or request.cookies.get("rs_reader") or request.path == "/api/login":
            store.log("refused_unknown_reader", None, request.path)  # a code was given (not a first visit)
        return _error(401, "unknown reader code: log in with the code the study coordinator gave you")

    # ------------------------------------------------------------------------------------------ pages
    @app.get("/")
    def reader_page():
        return send_from_directory(STATIC, "reader.html")

    @app.get("/admin")
    def admin_page():
        return send_from_directory(STATIC, "admin.html")

    @app.get("/static/<path:name>")
    def static_file(name: str):
        return send_from_directory(STATIC, name)

    # ------------------------------------------------------------------------------------------ reader
    @app.post("/api/login")
    def login():
        body = request.get_json(silent=True) or {}
        reader = readers.get(str(body.get("code", "")).strip())
        if reader is None:
            return _unknown_reader()
        store.log("login", reader["name"])
        resp = jsonify(_state(reader))
        resp.set_cookie("rs_reader", reader["code"], httponly=True, samesite="Strict", max_age=30 * 86400)
        return resp

    @app.post("/api/logout")
    def logout():
        resp = jsonify({"ok": True})
        resp.delete_cookie("rs_reader")
        return resp

    @app.get("/api/state")
    def state():
        reader = _reader()
        if reader is None:
            return _unknown_reader()
        return jsonify(_state(reader))

    @app.get("/image/<image_id>")
    def image(image_id: str):
        reader = _reader()
        if reader is None:
            return _unknown_reader()
        if image_id not in positions[reader["name"]]:
            store.log("refused_not_assigned", reader["name"], image_id)
            return _error(403, f"image {image_id[:40]!r} is not assigned to reader {reader['name']}")
        resp = send_file(study_dir / "images" / f"{image_id}.png", mimetype="image/png", max_age=0)
        resp.headers["Cache-Control"] = "private, max-age=86400"
        return resp

    @app.post("/api/answer")
    def answer():
        reader = _reader()
        if reader is None:
            return _unknown_reader()
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, "send the answer as a JSON object")
        image_id = str(body.get("image_id", ""))
        name = reader["name"]
        if image_id not in positions[name]:
            store.log("refused_not_assigned", name, image_id)
            return _error(403, f"image {image_id[:40]!r} is not assigned to reader {name}")
        call = body.get("call")
        if call not in ("real", "generated"):
            store.log("refused_out_of_range", name, f"call={call!r}")
            return _error(400, f"call must be 'real' or 'generated'; got {call!r}")
        conf = body.get("confidence")
        if isinstance(conf, bool) or not isinstance(conf, int) or not 1 <= conf <= 5:
            store.log("refused_out_of_range", name, f"confidence={conf!r}")
            return _error(400, f"confidence must be an integer from 1 (guess) to 5 (certain); got {conf!r}")
        pathology = body.get("pathology") or None
        if pathology is not None and pathology not in pathologies:
            store.log("refused_out_of_range", name, f"pathology={pathology!r}")
            return _error(400, f"pathology must be one of {sorted(pathologies)} or empty; got {pathology!r}")
        birads = body.get("birads") or None
        if birads is not None and str(birads) not in birads_values:
            store.log("refused_out_of_range", name, f"birads={birads!r}")
            return _error(400, f"BI-RADS must be one of {birads_values} or empty; got {birads!r}")
        elapsed = body.get("elapsed_ms")
        elapsed = int(elapsed) if isinstance(elapsed, (int, float)) and not isinstance(elapsed, bool) and elapsed >= 0 else None
        try:
            store.add(name, image_id, positions[name][image_id], call, conf, pathology,
                      None if birads is None else str(birads), elapsed)
        except DuplicateAnswer:
            store.log("refused_replay", name, image_id)
            return _error(409, f"image {image_id} was already answered by {name}; answers cannot be changed")
        return jsonify(_state(reader))

    # ------------------------------------------------------------------------------------------ admin
    @app.post("/api/admin/login")
    def admin_login():
        body = request.get_json(silent=True) or {}
        code = str(body.get("code", "")).strip()
        if not hmac.compare_digest(code.encode(), admin_code.encode()):
            store.log("refused_admin_login", None, "")
            return _error(401, "wrong admin code")
        resp = jsonify({"ok": True})
        resp.set_cookie("rs_admin", code, httponly=True, samesite="Strict", max_age=7 * 86400)
        return resp

    def _export_rows() -> list[dict[str, Any]]:
        rows = []
        for a in store.all():
            it = items[a["image_id"]]
            rows.append({**{k: a[k] for k in ("reader", "image_id", "position", "call", "confidence", "pathology",
                                                "birads", "elapsed_ms", "answered_at")},
                         "truth": it["truth"], "correct": int(a["call"] == it["truth"]),
                         "requested_pathology": it.get("pathology"), "requested_birads": it.get("birads")})
        return [{k: r[k] for k in EXPORT_FIELDS} for r in rows]

    @app.get("/api/admin/progress")
    def progress():
        if not _is_admin():
            return _error(401, "admin code required: log in on /admin")
        counts, last = store.counts(), store.last_answer()
        refused: dict[str, int] = {}
        for e in store.events():
            if e["kind"].startswith("refused"):
                refused[e["kind"]] = refused.get(e["kind"], 0) + 1
        return jsonify({
            "readers": [{"reader": r["name"], "answered": counts.get(r["name"], 0), "total": len(r["order"]),
                         "last_answer_at": last.get(r["name"])} for r in study["readers"]],
            "images": len(items), "refused": refused,
        })

    @app.get("/api/admin/export.json")
    def export_json():
        if not _is_admin():
            return _error(401, "admin code required: log in on /admin")
        resp = jsonify({"fields": list(EXPORT_FIELDS), "answers": _export_rows()})
        resp.headers["Content-Disposition"] = "attachment; filename=reader_study_answers.json"
        return resp

    @app.get("/api/admin/export.csv")
    def export_csv():
        if not _is_admin():
            return _error(401, "admin code required: log in on /admin")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(EXPORT_FIELDS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(_export_rows())
        return Response(buf.getvalue(), mimetype="text/csv",
                        headers={"Content-Disposition": "attachment; filename=reader_study_answers.csv"})

    @app.errorhandler(404)
    def _not_found(_err):
        return _error(404, f"no such page: {request.path}")

    @app.errorhandler(405)
    def _bad_method(_err):
        return _error(405, f"{request.method} is not allowed on {request.path}")

    return app


def serve(study_dir: str | Path, host: str = "127.0.0.1", port: int = 8765, threads: int = 8,
          db_path: str | Path | None = None) -> None:
    """Serve the study with waitress until interrupted (one process, ``threads`` worker threads)."""
    from waitress import serve as waitress_serve

    app = create_app(study_dir, db_path)
    print(f"reader study {Path(study_dir)} on http://{host}:{port}/ (admin: /admin); Ctrl-C stops it", flush=True)
    waitress_serve(app, host=host, port=int(port), threads=int(threads), ident="busgen-reader-study")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study folder made by `busgen reader-study build`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for the whole network)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--db", default=None, help="answers database (default STUDY/answers.sqlite)")


def run_from_args(args: argparse.Namespace) -> int:
    serve(args.study, args.host, args.port, args.threads, args.db)
    return 0
