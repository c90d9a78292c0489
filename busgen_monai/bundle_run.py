"""Running MONAI bundles: find a bundle by name or folder, resolve config lists, parse ``--key value`` overrides,
validate them against the config, and run through :func:`monai.bundle.run`.

This is the one public place for it: the ``busgen`` CLI, the main job (:mod:`busgen_monai.pipeline`), plugins and
benchmarks call :func:`run_bundle` from here (no module imports :mod:`busgen_monai.cli` for it).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from .bundle_check import BASE_KEY, config_bases

__all__ = ["bundle_workflow", "resolve_bundle", "resolve_configs", "config_bases", "BASE_KEY", "parse_overrides", "run_bundle", "all_bundles", "configs_of"]


def _all_bundles() -> dict[str, Path]:
    from .plugins import builtin_bundles, discover_plugins

    bundles = builtin_bundles()
    for name, path in discover_plugins().bundles().items():
        bundles.setdefault(name, path)
    return bundles


def resolve_bundle(name_or_path: str) -> Path:
    """A bundle folder from a bundle name (built-in or plugin) or a path."""
    path = Path(name_or_path)
    if (path / "configs").is_dir():
        return path.resolve()
    bundles = _all_bundles()
    if name_or_path in bundles:
        return bundles[name_or_path]
    raise ValueError(f"no bundle {name_or_path!r}; known bundles: {sorted(bundles)} (or give a bundle folder)")


def _configs_of(bundle: Path) -> list[str]:
    cdir = bundle / "configs"
    return sorted(
        str(p.relative_to(cdir).with_suffix(""))
        for p in cdir.rglob("*")
        if p.suffix in (".json", ".yaml", ".yml") and p.stem not in ("metadata",) and p.is_file()
    )


def resolve_configs(bundle: Path, config: str) -> list[Path]:
    """Config files for ``config``: a name (``train``), a comma list merged in order (``train,preset_tiny``), or
    paths; each preceded by the configs it extends (``"_base_"``, see :func:`config_bases`)."""
    files: list[Path] = []
    for part in config.split(","):
        part = part.strip()
        cand = [Path(part), bundle / "configs" / part]
        cand += [bundle / "configs" / f"{part}{ext}" for ext in (".json", ".yaml", ".yml")]
        found = next((c for c in cand if c.is_file()), None)
        if found is None:
            raise ValueError(f"bundle {bundle.name} has no config {part!r}; it has {_configs_of(bundle)}")
        files += [p for p in config_bases(found) if p not in files]
    return files


def parse_overrides(extra: Sequence[str]) -> dict:
    """``--key value`` pairs -> dict; values parsed as JSON when they are JSON (numbers, lists, true/false)."""
    out: dict = {}
    it = iter(extra)
    for token in it:
        if not token.startswith("--"):
            raise ValueError(f"expected --key value, got {token!r}")
        key, eq, value = token[2:].partition("=")
        if not eq:
            try:
                value = next(it)
            except StopIteration:
                raise ValueError(f"--{key} needs a value") from None
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out



class _ConfigRootNotice(logging.Filter):
    """Drops MONAI's "Not all config files are in <dir>" notice. MONAI logs it whenever a config list spans two
    folders (an overlay's ``"_base_"`` in another bundle); it only matters when ``meta_file``/``logging_file`` are
    left to default to the first file's folder, and the runners here always pass both explicitly."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("Not all config files are in")


@contextlib.contextmanager
def _explicit_config_root():
    log = logging.getLogger("monai.bundle.workflows")
    notice = _ConfigRootNotice()
    log.addFilter(notice)
    try:
        yield
    finally:
        log.removeFilter(notice)


def run_bundle(bundle: str | Path, config: str, run_id: str = "run", **overrides) -> None:
    """Run a bundle config in this process through ``monai.bundle.run`` (bundle root, metadata, logging set)."""
    bundle = resolve_bundle(str(bundle))
    files = resolve_configs(bundle, config)
    kwargs = {"bundle_root": str(bundle)}
    meta = bundle / "configs" / "metadata.json"
    if meta.is_file():
        kwargs["meta_file"] = str(meta)
    logconf = bundle / "configs" / "logging.conf"
    if logconf.is_file():
        kwargs["logging_file"] = str(logconf)
    from .bundle_check import validate_overrides

    validate_overrides(files, overrides, bundle=bundle.name)  # unknown keys, wrong types, ranges: before running
    kwargs.update(overrides)
    from monai.bundle import run

    with _explicit_config_root():
        run(run_id=run_id, config_file=[str(f) for f in files] if len(files) > 1 else str(files[0]), **kwargs)


def bundle_workflow(bundle: str | Path, configs: str | Sequence[str | Path], overrides: dict | None = None, *,
                    run: bool = True, logging_file: str | bool | None = False, workflow_type: str | None = None):
    """A ``monai.bundle.ConfigWorkflow`` of a bundle (name or folder) from config names or paths merged in order
    (``"train,evaluate"`` or ``["train", "preset_cpu"]``; ``"_base_"`` followed) and overrides, validated first
    (unknown keys, types, ranges). Initialised, and unless ``run=False`` also run and finalised. Returns the
    workflow: ``wf.parser.get_parsed_content(id)`` gives any object it built. For code that needs the objects a
    bundle builds (plugins' Python APIs, tests); :func:`run_bundle` is the same as a command."""
    from monai.bundle import ConfigWorkflow

    from .bundle_check import validate_overrides

    root = resolve_bundle(str(bundle))
    config = configs if isinstance(configs, str) else ",".join(str(c) for c in configs)
    files = resolve_configs(root, config)
    overrides = dict(overrides or {})
    validate_overrides(files, overrides, bundle=root.name)
    meta = root / "configs" / "metadata.json"
    with _explicit_config_root():
        wf = ConfigWorkflow(config_file=[str(f) for f in files], meta_file=str(meta) if meta.is_file() else None,
                            logging_file=logging_file, workflow_type=workflow_type,
                            **{"bundle_root": str(root), **overrides})
    wf.initialize()
    if run:
        wf.run()
        wf.finalize()
    return wf


all_bundles = _all_bundles
configs_of = _configs_of
