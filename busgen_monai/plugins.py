"""Plugin discovery and registry.

Plugins are ordinary Python packages that declare an entry point in the group ``busgen_monai.plugins``::

    # the plugin's setup.cfg
    [options.entry_points]
    busgen_monai.plugins =
        cpsample = busgen_cpsample.plugin:PLUGIN

The entry point names a :class:`Plugin` object (or a zero-argument callable returning one). A plugin
declares its name, version, components (role -> dotted path, imported only when asked for), the bundles
it ships (name -> folder) and optional ``busgen`` sub-commands (name -> dotted path of a
``main(argv) -> int`` function). Loading a plugin imports only the module holding the ``Plugin`` object,
so plugins must keep that module free of heavy imports and side effects.

A plugin that fails to load is reported with its error in :attr:`PluginRegistry.errors` and skipped; the
others still load.

Extension points are explicit protocols (:class:`SamplingGuard`, :class:`DatalistFilter`,
:class:`AugmentationTransform`): a plugin implements one and is named in a bundle config; it never patches
library internals.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ENTRY_POINT_GROUP",
    "PUBLIC_API",
    "Plugin",
    "PluginRegistry",
    "PluginLoadError",
    "discover_plugins",
    "locate",
    "builtin_bundles",
    "SamplingGuard",
    "DatalistFilter",
    "AugmentationTransform",
]

ENTRY_POINT_GROUP = "busgen_monai.plugins"

#: Modules (and their sub-modules) a plugin may import. Everything else (``busgen_monai.cli``, the main job in
#: ``busgen_monai.pipeline``, names starting with ``_``) is internal and may change without notice.
#: ``tests/test_architecture.py`` fails when a plugin imports outside this list; docs/architecture.md explains it.
PUBLIC_API = (
    "busgen_monai.plugins",
    "busgen_monai.bundle_run",
    "busgen_monai.utils",
    "busgen_monai.safe_load",
    "busgen_monai.presets",
    "busgen_monai.data",
    "busgen_monai.networks",
    "busgen_monai.schedulers",
    "busgen_monai.inferers",
    "busgen_monai.engines",
    "busgen_monai.adaptation",
    "busgen_monai.evaluation",
    "busgen_monai.visualize",
)
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plugin:
    """What a plugin declares.

    Args:
        name: unique plugin name (``cpsample``).
        version: the plugin's version string.
        components: role -> dotted path, e.g. ``{"guard": "busgen_cpsample.guard.CPSamplingGuard"}``.
        bundles: bundle name -> folder; relative folders are relative to the module defining the plugin.
        commands: ``busgen`` sub-command name -> dotted path of ``main(argv: list[str]) -> int``.
        description: one line shown by ``busgen plugins``.
    """

    name: str
    version: str
    components: Mapping[str, str] = field(default_factory=dict)
    bundles: Mapping[str, str] = field(default_factory=dict)
    commands: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    module_file: str | None = None

    def bundle_paths(self) -> dict[str, Path]:
        base = Path(self.module_file).parent if self.module_file else Path.cwd()
        return {name: (Path(p) if os.path.isabs(p) else (base / p)).resolve() for name, p in self.bundles.items()}


class PluginLoadError(RuntimeError):
    """A plugin's entry point could not be loaded or did not produce a :class:`Plugin`."""


def locate(dotted: str) -> Any:
    """Import ``package.module.attr`` (or ``package.module:attr``) and return the attribute."""
    if ":" in dotted:
        module_name, _, attr = dotted.partition(":")
    else:
        module_name, _, attr = dotted.rpartition(".")
    if not module_name or not attr:
        raise ImportError(f"{dotted!r} is not a dotted path like 'package.module.name'")
    module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise ImportError(f"{dotted!r}: module {module_name!r} has no attribute {attr!r}") from err
    return obj


def _load_entry_point(ep: metadata.EntryPoint) -> Plugin:
    try:
        obj = ep.load()
    except Exception as err:  # noqa: BLE001 - any import failure of a third-party plugin is reported
        raise PluginLoadError(f"{type(err).__name__}: {err}") from err
    if callable(obj) and not isinstance(obj, Plugin):
        try:
            obj = obj()
        except Exception as err:  # noqa: BLE001
            raise PluginLoadError(f"factory {ep.value} raised {type(err).__name__}: {err}") from err
    if not isinstance(obj, Plugin):
        raise PluginLoadError(f"entry point {ep.value} gave {type(obj).__name__}, expected busgen_monai.plugins.Plugin")
    if obj.module_file is None:
        module = importlib.import_module(ep.value.split(":")[0])
        obj = Plugin(**{**obj.__dict__, "module_file": getattr(module, "__file__", None)})
    return obj


@dataclass
class PluginRegistry:
    """Loaded plugins and the errors of those that failed."""

    plugins: dict[str, Plugin] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.plugins

    def __getitem__(self, name: str) -> Plugin:
        if name not in self.plugins:
            hint = f" (it failed to load: {self.errors[name]})" if name in self.errors else ""
            raise KeyError(f"no plugin named {name!r}{hint}; installed: {sorted(self.plugins)}")
        return self.plugins[name]

    def component(self, plugin: str, role: str) -> Any:
        """Import and return a plugin's component by role."""
        p = self[plugin]
        if role not in p.components:
            raise KeyError(f"plugin {plugin!r} has no component {role!r}; it has {sorted(p.components)}")
        return locate(p.components[role])

    def bundles(self) -> dict[str, Path]:
        """All bundles shipped by plugins: name -> folder."""
        out: dict[str, Path] = {}
        for p in self.plugins.values():
            out.update(p.bundle_paths())
        return out

    def commands(self) -> dict[str, tuple[str, str]]:
        """``busgen`` sub-commands added by plugins: name -> (plugin, dotted path)."""
        return {cmd: (p.name, target) for p in self.plugins.values() for cmd, target in p.commands.items()}


def discover_plugins(group: str = ENTRY_POINT_GROUP) -> PluginRegistry:
    """Load every plugin registered under the entry-point ``group``; broken ones are reported and skipped."""
    registry = PluginRegistry()
    for ep in sorted(metadata.entry_points(group=group), key=lambda e: e.name):
        try:
            plugin = _load_entry_point(ep)
        except PluginLoadError as err:
            registry.errors[ep.name] = str(err)
            logger.warning("busgen plugin %r failed to load and is skipped: %s", ep.name, err)
            continue
        if plugin.name in registry.plugins:
            registry.errors[ep.name] = f"duplicate plugin name {plugin.name!r}; the first one registered is kept"
            continue
        registry.plugins[plugin.name] = plugin
    return registry


def builtin_bundles() -> dict[str, Path]:
    """Bundles that come with busgen-monai and those on ``BUSGEN_BUNDLE_PATH`` (``os.pathsep``-separated folders
    of bundles). The core bundles are the repository's ``bundles/`` folder in a source checkout (editable install)
    and ``busgen_monai/_bundles/`` in an installed wheel (copied there by setup.py's build step)."""
    here = Path(__file__).resolve().parent
    roots = [here / "_bundles", here.parent / "bundles"]
    roots += [Path(p) for p in os.environ.get("BUSGEN_BUNDLE_PATH", "").split(os.pathsep) if p]
    found: dict[str, Path] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            if (d / "configs").is_dir():
                found.setdefault(d.name, d.resolve())
    return found


# ---------------------------------------------------------------------------------------------- protocols
@runtime_checkable
class SamplingGuard(Protocol):
    """Called by the guided sampler at every solver step (e.g. CPSampling).

    ``__call__(x_t, t, model_output, **info) -> model_output``: may return a modified noise/data
    prediction; ``info`` holds ``alphas_cumprod_t`` and the condition dict. ``reset()`` is called before
    each batch; ``stats()`` returns counts to report (e.g. how often the guard fired).
    """

    def __call__(self, x_t: Any, t: Any, model_output: Any, **info: Any) -> Any: ...

    def reset(self) -> None: ...

    def stats(self) -> Mapping[str, Any]: ...


@runtime_checkable
class DatalistFilter(Protocol):
    """Post-hoc filter over generated items (e.g. the cleaning filter).

    ``__call__(items, base_dir) -> (kept, rejected)`` where each rejected item carries ``reject_reason``
    and ``reject_score``.
    """

    def __call__(self, items: Sequence[Mapping[str, Any]], base_dir: str | os.PathLike) -> tuple[list, list]: ...


@runtime_checkable
class AugmentationTransform(Protocol):
    """A MONAI dictionary transform used in the adaptation bundle's augmentation hook
    (e.g. device-style translation). It must keep ``boxes``/``mask`` unchanged or update them consistently."""

    def __call__(self, data: Mapping[str, Any]) -> Mapping[str, Any]: ...


CommandMain = Callable[[Sequence[str]], int]
