"""Evaluation reports: machine-readable JSON plus human-readable Markdown and HTML.

``results`` is a nested dict of numbers (as returned by
:func:`~busgen_monai.evaluation.metrics.binary_report`, ``BootstrapCI.as_dict()``, DeLong tuples
turned into dicts, ...). A dict holding ``estimate``, ``lower`` and ``upper`` is rendered as
"estimate (95% CI lower to upper)". Dataclasses with ``as_dict()`` and numpy values are
converted automatically; non-finite numbers become ``null`` in JSON (strict JSON has no
NaN/Infinity) and "n/a" / "inf" in the text reports.

Plots are PNG files; those outside ``out_dir`` are copied to ``out_dir/plots/`` so the report
folder is self-contained and the Markdown/HTML link them by relative path. Every file is written
atomically (:mod:`busgen_monai.utils.io`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from busgen_monai.utils.io import atomic_copy, atomic_write_json, atomic_write_text, to_jsonable

__all__ = ["to_jsonable", "format_value", "write_report"]


def format_value(value: Any) -> str:
    """Short human-readable form of one result value."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.4g}"
    if _is_ci(value):
        level = value.get("confidence")
        level_txt = f"{100 * float(level):g}% CI" if isinstance(level, (int, float)) and level else "CI"
        return (
            f"{format_value(value['estimate'])} ({level_txt} "
            f"{format_value(value['lower'])} to {format_value(value['upper'])})"
        )
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (int, float, np.integer, np.floating, str)) or v is None for v in value):
            return ", ".join(format_value(v) if not isinstance(v, str) else v for v in value)
        return json.dumps(to_jsonable(value))
    return str(value)


def _is_ci(value: Any) -> bool:
    return isinstance(value, Mapping) and {"estimate", "lower", "upper"} <= set(value)


def _rows(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten one section into (quantity, formatted value) rows."""
    if isinstance(value, Mapping) and not _is_ci(value):
        rows: list[tuple[str, str]] = []
        for k, v in value.items():
            rows.extend(_rows(v, f"{prefix} / {k}" if prefix else str(k)))
        return rows
    return [(prefix or "value", format_value(value))]


def _sections(results: Mapping[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    summary = [(str(k), format_value(v)) for k, v in results.items() if not isinstance(v, Mapping) or _is_ci(v)]
    sections = [("Summary", summary)] if summary else []
    sections += [(str(k), _rows(v)) for k, v in results.items() if isinstance(v, Mapping) and not _is_ci(v)]
    return sections


def _collect_plots(out_dir: Path, plots: Mapping[str, Any]) -> dict[str, str]:
    """Relative (posix) paths of the plots inside ``out_dir``, copying outside ones in."""
    rel: dict[str, str] = {}
    root = out_dir.resolve()
    for name, p in plots.items():
        src = Path(p)
        if not src.is_file():
            raise FileNotFoundError(f"plot {name!r}: file {str(src)!r} does not exist; write the plot first.")
        src_res = src.resolve()
        if src_res.is_relative_to(root):
            rel[str(name)] = src_res.relative_to(root).as_posix()
            continue
        dest_dir = out_dir / "plots"
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / src.name
        i = 1
        while dest.exists() and dest.read_bytes() != src.read_bytes():
            dest = dest_dir / f"{src.stem}_{i}{src.suffix}"
            i += 1
        if not dest.exists():
            atomic_copy(src, dest)
        rel[str(name)] = dest.relative_to(out_dir).as_posix()
    return rel


def _markdown(title: str, created: str, sections: list, plot_paths: Mapping[str, str]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"# {title}", "", f"Created {created} (UTC). Machine-readable numbers: the JSON file next to this one.", ""]
    for name, rows in sections:
        lines += [f"## {name}", "", "| Quantity | Value |", "|---|---|"]
        lines += [f"| {cell(k)} | {cell(v)} |" for k, v in rows]
        lines.append("")
    if plot_paths:
        lines += ["## Figures", ""]
        for name, rel in plot_paths.items():
            lines += [f"### {name}", "", f"![{name}]({quote(rel)})", ""]
    return "\n".join(lines)


_CSS = (
    "body{font-family:system-ui,Arial,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
    "th{background:#f2f2f2}td.v{font-variant-numeric:tabular-nums}figure{margin:1em 0}img{max-width:100%}"
    "figcaption{color:#555;font-size:0.9em}"
)


def _html(title: str, created: str, sections: list, plot_paths: Mapping[str, str], out_dir: Path, inline: bool) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>Created {esc(created)} (UTC). Machine-readable numbers: the JSON file next to this one.</p>",
    ]
    for name, rows in sections:
        parts.append(f"<h2>{esc(name)}</h2><table><tr><th>Quantity</th><th>Value</th></tr>")
        parts += [f'<tr><td>{esc(k)}</td><td class="v">{esc(v)}</td></tr>' for k, v in rows]
        parts.append("</table>")
    if plot_paths:
        parts.append("<h2>Figures</h2>")
        for name, rel in plot_paths.items():
            if inline:
                data = base64.b64encode((out_dir / rel).read_bytes()).decode("ascii")
                src = f"data:image/png;base64,{data}"
            else:
                src = quote(rel)
            parts.append(
                f'<figure><img src="{esc(src)}" alt="{esc(name)}"><figcaption>{esc(name)}</figcaption></figure>'
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    out_dir: str | os.PathLike,
    results: Mapping[str, Any],
    plots: Mapping[str, str | os.PathLike] | None = None,
    *,
    title: str = "Evaluation report",
    basename: str = "report",
    inline_images: bool = False,
) -> tuple[Path, Path, Path]:
    """Write ``<basename>.json``, ``<basename>.md`` and ``<basename>.html`` into ``out_dir``.

    Args:
        out_dir: report folder (created if missing).
        results: nested dict of numbers / CI dicts (see the module docstring).
        plots: ``{caption: png path}``; copied into ``out_dir/plots/`` when outside ``out_dir``.
        title: report title.
        basename: file name stem of the three files.
        inline_images: embed the PNGs in the HTML as base64 instead of relative links.

    Returns:
        ``(json_path, markdown_path, html_path)``.
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"results must be a dict of named results; got {type(results).__name__}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_paths = _collect_plots(out, plots or {})
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    try:
        from busgen_monai import __version__ as version
    except ImportError:  # pragma: no cover - the package always defines it
        version = "unknown"
    clean = to_jsonable(results)
    payload = {
        "title": title,
        "created_utc": created,
        "software": {"busgen_monai": version},
        "notes": "non-finite values (nan, inf) are written as null",
        "results": clean,
        "plots": plot_paths,
    }
    sections = _sections(to_jsonable(results, nonfinite_as_none=False))
    json_path = out / f"{basename}.json"
    md_path = out / f"{basename}.md"
    html_path = out / f"{basename}.html"
    atomic_write_json(json_path, payload, indent=2)
    atomic_write_text(md_path, _markdown(title, created, sections, plot_paths))
    atomic_write_text(html_path, _html(title, created, sections, plot_paths, out, inline_images))
    return json_path, md_path, html_path
