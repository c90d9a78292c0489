"""Share packaged bundles through a bundle hub, the way the MONAI model zoo does, and get them back.

A *hub* here is a folder (on a shared drive, or served over HTTP by any static file server) laid out as::

    HUB/index.json                              name -> version -> zip URL, zip sha256, model files
    HUB/<name>/<version>/<name>.zip             the bundle without its model files (configs, docs, metadata)
    HUB/<name>/<version>/models/...             the model files, fetched through large_files.yml

:func:`push_bundle` takes a zip written by ``busgen package``, moves its model files out of the zip, rewrites
``large_files.yml`` with each file's real URL and sha256 (the zoo's convention: big files are downloaded by
``monai.bundle.download_large_files``, each checked against its hash), writes the slim zip and updates
``index.json``. A version, once pushed, is immutable: pushing other content under the same version is refused.

:func:`pull_bundle` goes back through MONAI's own functions: ``download_url`` + ``extractall`` (what
``monai.bundle.download(url=...)`` does, here with the zip's sha256 from the index) for the zip and
``monai.bundle.download_large_files`` for the model files (hash-checked), then the project's offline checks
(:func:`busgen_monai.bundle_tools.check_large_files`). Models load with ``weights_only=True`` afterwards as always.

For the Hugging Face hub, MONAI's ``monai.bundle.push_to_hf_hub`` / ``download(source="huggingface_hub")`` take
the same bundle folder; they need a network and a token, so the tests use a local hub folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from .utils.io import atomic_write_text, file_sha256

__all__ = ["HubError", "push_bundle", "pull_bundle", "hub_index"]


class HubError(RuntimeError):
    """A push or pull that cannot be done; the message names the bundle, version or file and the fix."""


def _hub_root(hub: str | os.PathLike) -> Path:
    text = str(hub)
    if text.startswith("file://"):
        return Path(url2pathname(urlparse(text).path))
    if "://" in text:
        raise HubError(f"hub {text!r}: only a folder or a file:// URL can be pushed to (serve that folder over HTTP "
                       "to share it; pull accepts http(s) URLs)")
    return Path(text)


def _hub_url(hub: str | os.PathLike) -> str:
    text = str(hub)
    return text.rstrip("/") if "://" in text else Path(text).resolve().as_uri()


def hub_index(hub: str | os.PathLike) -> dict[str, Any]:
    """The hub's ``index.json`` (``{}`` for an empty hub); ``hub`` is a folder or a URL."""
    text = str(hub)
    if "://" in text and not text.startswith("file://"):
        from urllib.request import urlopen

        with urlopen(f"{text.rstrip('/')}/index.json") as resp:  # noqa: S310 - a hub URL the user gave
            return json.loads(resp.read().decode())
    path = _hub_root(hub) / "index.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HubError(f"{path}: not readable JSON ({err}); restore it from the hub's backup") from err


def _version_key(v: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in v.replace("-", ".").split("."))


def push_bundle(bundle_zip: str | os.PathLike, hub: str | os.PathLike) -> dict[str, Any]:
    """Publish a packaged bundle zip to ``hub`` (a folder or file:// URL); returns its index entry."""
    import yaml

    from .bundle_tools import check_large_files

    bundle_zip = Path(bundle_zip)
    if not zipfile.is_zipfile(bundle_zip):
        raise HubError(f"{bundle_zip} is not a bundle zip (write one with `busgen package`)")
    root_dir, url = _hub_root(hub), _hub_url(hub)
    with tempfile.TemporaryDirectory(prefix="busgen_push_") as tmp:
        with zipfile.ZipFile(bundle_zip) as z:
            z.extractall(tmp)
        tops = [p for p in Path(tmp).iterdir() if p.is_dir()]
        if len(tops) != 1:
            raise HubError(f"{bundle_zip}: a bundle zip holds one folder named after the bundle, found {len(tops)}")
        bundle = tops[0]
        check_large_files(bundle)  # every model file listed with its hash, nothing else in models/
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        name, version = bundle.name, str(meta.get("version", ""))
        if not version:
            raise HubError(f"{bundle_zip}: configs/metadata.json has no 'version'")
        dest = root_dir / name / version
        index = hub_index(hub)
        lf_path = bundle / "large_files.yml"
        entries = (yaml.safe_load(lf_path.read_text()) or {}).get("large_files", [])
        model_hashes = {e["path"]: str(e["hash_val"]) for e in entries}
        known = index.get(name, {}).get(version)
        if known is not None:
            if known.get("models") == model_hashes:
                return known  # the same content again: nothing to do
            raise HubError(f"{name} {version} is already on the hub with other model files; versions are immutable - "
                           "package it again with a new --version")
        for e in entries:
            src = bundle / e["path"]
            target = dest / e["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
            if file_sha256(target) != str(e["hash_val"]):
                raise HubError(f"{target}: copy does not match its sha256; check the hub's disk and push again")
            e["url"] = f"{url}/{name}/{version}/{e['path']}"
            e["hash_val"] = str(e["hash_val"])  # quoted in YAML: an all-digit hash must stay a string
            src.unlink()
        atomic_write_text(lf_path, yaml.safe_dump({"large_files": entries}, sort_keys=False))
        slim = dest / f"{name}.zip"
        dest.mkdir(parents=True, exist_ok=True)
        tmp_zip = Path(tmp) / f"{name}.zip"
        with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(bundle.rglob("*")):
                if p.is_file():
                    z.write(p, p.relative_to(Path(tmp)).as_posix())
        shutil.copyfile(tmp_zip, slim)
    entry = {"zip": f"{url}/{name}/{version}/{name}.zip", "zip_sha256": file_sha256(slim), "models": model_hashes,
             "description": meta.get("description", "")}
    index.setdefault(name, {})[version] = entry
    root_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root_dir / "index.json", json.dumps(index, indent=2, sort_keys=True))
    return entry


def pull_bundle(name: str, hub: str | os.PathLike, dest: str | os.PathLike, version: str | None = None,
                progress: bool = False) -> Path:
    """Download bundle ``name`` (latest version unless given) from ``hub`` into ``dest/name`` with MONAI's
    ``download_url``/``extractall`` and ``download_large_files``; the zip and every model file are checked against their sha256."""
    from monai.apps.utils import download_url, extractall
    from monai.bundle import download_large_files

    from .bundle_tools import check_large_files

    index = hub_index(hub)
    if name not in index:
        raise HubError(f"no bundle {name!r} on hub {hub}; it has {sorted(index) or 'nothing yet'}")
    versions = sorted(index[name], key=_version_key)
    version = version or versions[-1]
    if version not in index[name]:
        raise HubError(f"bundle {name!r} has no version {version!r} on hub {hub}; it has {versions}")
    entry = index[name][version]
    dest = Path(dest)
    target = dest / name
    if target.exists():
        raise HubError(f"{target} exists; pull into an empty folder (or remove it first)")
    dest.mkdir(parents=True, exist_ok=True)
    # what monai.bundle.download(url=...) does (download_url + extractall), with the zip's sha256 from the index
    zpath = dest / f"{name}.zip"
    try:
        download_url(url=entry["zip"], filepath=zpath, hash_val=entry["zip_sha256"], hash_type="sha256",
                     progress=progress)
    except (RuntimeError, ValueError, OSError) as err:  # monai's HashCheckError included
        raise HubError(f"{entry['zip']}: the hub copy differs from its index entry or cannot be read ({err})") from err
    extractall(filepath=zpath, output_dir=dest, has_base=True)
    zpath.unlink()
    download_large_files(bundle_path=str(target))
    check_large_files(target)
    return target
