"""Plugin discovery through the ``busgen_monai.plugins`` entry-point group, with real installed packages."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from busgen_monai.plugins import (
    AugmentationTransform,
    DatalistFilter,
    Plugin,
    SamplingGuard,
    discover_plugins,
    locate,
)


def _write_package(root: Path, dist: str, module: str, body: str, entry: str) -> Path:
    pkg = root / dist
    (pkg / module).mkdir(parents=True)
    (pkg / module / "__init__.py").write_text(textwrap.dedent(body))
    (pkg / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n')
    (pkg / "setup.cfg").write_text(textwrap.dedent(f"""
        [metadata]
        name = {dist}
        version = 0.0.1
        [options]
        packages = {module}
        [options.entry_points]
        busgen_monai.plugins =
            {entry}
    """))
    return pkg


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """Install a working and a broken throwaway plugin package into a temporary site folder with pip."""
    tmp = tmp_path_factory.mktemp("plugins")
    good = _write_package(tmp, "busgen-throwaway", "busgen_throwaway", """
        from busgen_monai.plugins import Plugin

        class Guard:
            def __call__(self, x_t, t, model_output, **info):
                return model_output
            def reset(self):
                pass
            def stats(self):
                return {}

        PLUGIN = Plugin(
            name="throwaway",
            version="0.0.1",
            description="a plugin made by the test suite",
            components={"guard": "busgen_throwaway.Guard"},
            bundles={"throwaway_bundle": "bundle"},
            commands={"hello": "busgen_throwaway.hello"},
        )

        def hello(argv):
            print("hello from the throwaway plugin", *argv)
            return 0
    """, "throwaway = busgen_throwaway:PLUGIN")
    (good / "busgen_throwaway" / "bundle" / "configs").mkdir(parents=True)
    (good / "busgen_throwaway" / "bundle" / "configs" / "inference.json").write_text("{}")
    broken = _write_package(tmp, "busgen-broken", "busgen_broken", """
        raise ImportError("this plugin needs a package that is not installed: frobnicate")
    """, "broken = busgen_broken:PLUGIN")
    site = tmp / "site"
    for pkg in (good, broken):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "--target", str(site), str(pkg)], check=True,
                       capture_output=True)
    # package data (the bundle folder) is not declared in setup.cfg, copy it next to the installed module
    import shutil

    shutil.copytree(good / "busgen_throwaway" / "bundle", site / "busgen_throwaway" / "bundle", dirs_exist_ok=True)
    return site


def test_throwaway_plugin_registered_and_broken_one_reported(plugin_site, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_site))
    registry = discover_plugins()
    assert "throwaway" in registry
    p = registry["throwaway"]
    assert p.version == "0.0.1"
    guard_cls = registry.component("throwaway", "guard")
    assert isinstance(guard_cls(), SamplingGuard)
    assert registry.bundles()["throwaway_bundle"] == (plugin_site / "busgen_throwaway" / "bundle").resolve()
    assert registry.commands()["hello"] == ("throwaway", "busgen_throwaway.hello")
    assert "broken" not in registry.plugins
    assert "frobnicate" in registry.errors["broken"]
    with pytest.raises(KeyError, match="failed to load.*frobnicate"):
        registry["broken"]


def test_cli_lists_plugins_and_runs_plugin_command(plugin_site):
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    out = subprocess.run([sys.executable, "-m", "busgen_monai.cli", "plugins"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "throwaway 0.0.1" in out and "component guard: busgen_throwaway.Guard" in out
    assert "broken  FAILED TO LOAD (skipped)" in out
    out = subprocess.run([sys.executable, "-m", "busgen_monai.cli", "hello", "world"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "hello from the throwaway plugin world" in out
    out = subprocess.run([sys.executable, "-m", "busgen_monai.cli", "bundles"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "throwaway_bundle" in out and "inference" in out


def test_project_plugins_are_registered():
    """The plugins under plugins/ are installed packages registered through the same entry-point group."""
    root = Path(__file__).resolve().parent.parent / "plugins"
    shipped = sorted(p.name for p in root.iterdir() if (p / "setup.cfg").is_file()) if root.is_dir() else []
    registry = discover_plugins()
    assert not {k: v for k, v in registry.errors.items() if not k.startswith("broken")}
    for dist in shipped:
        assert any(dist.replace("-", "_").endswith(name) or name in dist for name in registry.plugins), dist


def test_locate_and_protocols():
    assert locate("busgen_monai.plugins.Plugin") is Plugin
    assert locate("busgen_monai.plugins:discover_plugins") is discover_plugins
    with pytest.raises(ImportError, match="no attribute"):
        locate("busgen_monai.plugins.Nope")

    class Filter:
        def __call__(self, items, base_dir):
            return list(items), []

    assert isinstance(Filter(), DatalistFilter) and not isinstance(Filter(), SamplingGuard)
    assert isinstance(lambda d: d, AugmentationTransform)
