"""Package adapted generators as MONAI model-zoo bundles and verify bundles offline.

:func:`package_bundle` writes a bundle folder and a zip in the model-zoo layout::

    NAME/
      LICENSE
      configs/metadata.json      version, changelog, monai/pytorch versions, required packages, network_data_format,
                                 intended use, data source (+ base_model name/version/sha256 for the adapter form)
      configs/inference.json     sampling config (same keys as bundles/busgen_sample), form preset
      configs/logging.conf
      models/adapter.pt (+ peft_adapter/) | models/model.pt + models/model.json
      docs/README.md
      large_files.yml            path + sha256 of every model file

Two forms: ``adapter`` (adapter-only weights; the base is referenced by name, version and hash, and inference needs
``--base_checkpoint PATH``) and ``merged`` (LoRA folded into the weights; self-contained). The merged form keeps the
zoo's weight layout: ``models/model.pt`` is a bare state dict (``network_def.load_state_dict`` after a
``weights_only=True`` load) and the network arguments, condition codec and settings are plain JSON in
``models/model.json`` (read back by :func:`busgen_monai.inferers.read_checkpoint`).

:func:`verify_bundle` checks a bundle folder or zip offline: metadata against the model zoo's schema (vendored) and the project's stricter JSON schema
(``busgen_monai/resources/bundle_metadata_schema.json``), sha256 of the files in ``large_files.yml``, a
shape check (network from the inference config, inputs shaped per ``network_data_format``, and the zoo's own
``monai.bundle.verify_net_in_out`` with the diffusion forward arguments), and a load-and-sample round trip from the
zip extracted into a fresh temp folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .safe_load import load_weights
from .utils.io import file_hash, file_sha256

__all__ = ["BundleVerificationError", "package_bundle", "verify_bundle", "validate_metadata", "check_large_files",
           "check_network_shapes", "SCHEMA_PATH", "ZOO_SCHEMA_URL", "ZOO_SCHEMA_PATH"]

SCHEMA_PATH = Path(__file__).parent / "resources" / "bundle_metadata_schema.json"
#: the model zoo's general metadata schema: its published URL (every bundle's ``schema`` field) and a vendored copy
ZOO_SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
ZOO_SCHEMA_PATH = Path(__file__).parent / "resources" / "zoo" / "meta_schema_20240725.json"
_REQUIRED = ("LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md", "large_files.yml")


class BundleVerificationError(ValueError):
    """A bundle failed verification; the message names the file/key and what is wrong."""


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("busgen-monai", "pytorch-ignite", "einops", "peft", "pillow", "tqdm"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def package_bundle(
    out_dir: str | Path,
    form: str = "adapter",
    adapter: str | Path | None = None,
    merged_model: str | Path | None = None,
    base_checkpoint: str | Path | None = None,
    preset_name: str = "tiny",
    name: str = "busgen_adapted",
    version: str = "0.1.0",
    changelog: Mapping[str, str] | None = None,
    base_name: str = "busgen_pretrain",
    base_version: str = "0.1.0",
    intended_use: str | None = None,
    data_source: str | None = None,
    source_bundle: str | Path | None = None,
    box_prior: str | Path | None = None,
    devices: Sequence[str] | None = None,
    make_zip: bool = True,
) -> tuple[Path, Path | None]:
    """Write bundle folder ``out_dir/name`` (and ``out_dir/name.zip``); returns ``(folder, zip_or_None)``.

    Args:
        form: ``"adapter"`` (needs ``adapter`` and ``base_checkpoint``, whose hash is recorded) or ``"merged"``
            (needs ``merged_model``).
        adapter / merged_model: files written by the ``busgen_adapt`` bundle (``models/adapter.pt``, ``models/model.pt``).
        base_checkpoint: the base the adapter was trained on (not copied; identified by name/version/sha256).
        preset_name: the network preset (sets shapes in ``network_data_format`` and the inference default).
        box_prior: a box prior JSON (``models/box_prior.json`` of an adapt run), shipped in ``models/`` and used by
            the inference config (its pathologies become the default ones to sample).
        devices: default devices to sample (inference key ``devices``).
    """
    import monai
    import torch

    from .presets import get_preset

    if form not in ("adapter", "merged"):
        raise ValueError(f"form must be 'adapter' or 'merged', got {form!r}")
    if source_bundle is None:  # the installed adapt bundle (source checkout or wheel)
        from .plugins import builtin_bundles

        source_bundle = builtin_bundles()["busgen_adapt"]
    src = Path(source_bundle)
    model_src = Path(adapter if form == "adapter" else merged_model or "")
    if not model_src.is_file():
        raise FileNotFoundError(f"{form} model file {model_src} does not exist")
    if not devices:
        raise ValueError("package needs --devices (the device names the bundle samples by default, e.g. "
                         "--devices GE-LOGIQ-7): a packaged bundle has no datalist to take them from, so without them "
                         "it cannot sample")
    if form == "adapter" and (base_checkpoint is None or not Path(base_checkpoint).is_file()):
        raise FileNotFoundError(f"the adapter form needs the base checkpoint it was trained on (got {base_checkpoint})")
    root = Path(out_dir) / name
    if root.exists():
        shutil.rmtree(root)
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "docs").mkdir()
    shutil.copy2(src / "LICENSE", root / "LICENSE")
    shutil.copy2(src / "configs" / "logging.conf", root / "configs" / "logging.conf")
    model_name = "adapter.pt" if form == "adapter" else "model.pt"
    if form == "merged":
        # the zoo's layout: models/model.pt a bare state dict (loads into network_def with weights_only=True),
        # network arguments, codec and settings as plain JSON in models/model.json
        from .inferers import export_generator

        export_generator(model_src, root / "models" / model_name, layout="zoo", preset=preset_name)
    else:
        shutil.copy2(model_src, root / "models" / model_name)

    state = load_weights(model_src, f"{form} model")
    codec = (state.get("busgen_extra", {}) or {}).get("codec") if form == "adapter" else state.get("codec")
    preset = get_preset(preset_name)
    meta = json.loads((src / "configs" / "metadata.json").read_text())
    meta.update({
        "version": version,
        "changelog": dict(changelog or {version: f"{form} bundle packaged from busgen_adapt"}),
        "monai_version": monai.__version__.split("+")[0],
        "pytorch_version": torch.__version__.split("+")[0],
        "required_packages_version": _versions(),
        "name": name,
        "intended_use": intended_use or meta.get("intended_use", "Research only. Not for clinical use."),
        "data_source": data_source or meta.get("data_source", ""),
        "bundle_form": form,
        "preset_name": preset_name,
    })
    if codec:
        meta["conditions"] = {"pathologies": codec.get("pathologies"), "max_boxes": codec.get("max_boxes", 8)}
    nd = meta["network_data_format"]
    size = [int(preset["image_size"])] * 2
    nd["inputs"]["image"]["spatial_shape"] = size
    nd["outputs"]["pred"]["spatial_shape"] = size
    nd["inputs"]["timesteps"]["value_range"] = [0, int(preset["num_train_timesteps"]) - 1]
    if codec:
        nd["inputs"]["context"]["spatial_shape"] = [3 + 4 * int(codec.get("max_boxes", 8))]
    if form == "adapter":
        meta["base_model"] = {"name": base_name, "version": base_version, "sha256": file_sha256(Path(base_checkpoint))}
    else:
        meta.pop("base_model", None)
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4))

    from .bundle_check import BASE_KEY, declared_keys

    # self-contained: the source config merged with the config it extends (the sample bundle's), as one file
    inf = declared_keys([src / "configs" / "inference.json"])
    inf.pop(BASE_KEY, None)
    inf["form"] = form
    inf["preset_name"] = preset_name
    if box_prior is not None:
        from .inferers.box_prior import BoxPrior

        prior = BoxPrior.load(box_prior)
        shutil.copy2(box_prior, root / "models" / "box_prior.json")
        inf["box_prior"] = "$os.path.join(@bundle_root, 'models', 'box_prior.json')"
        inf["pathologies"] = list(prior.pathologies)
    if devices:
        inf["devices"] = list(devices)
    if form == "adapter":
        inf["base_checkpoint"] = "$os.path.join(@bundle_root, 'models', 'base.pt')"
    else:  # self-contained: no base (the source config defaults to the shipped generator)
        inf["base_checkpoint"] = None
    (root / "configs" / "inference.json").write_text(json.dumps(inf, indent=4))

    base_line = (f"Adapter-only weights. Base: `{base_name}` {base_version}, sha256 `{meta['base_model']['sha256']}` "
                 "(not included). Sample with `python -m monai.bundle run --config_file configs/inference.json "
                 "--bundle_root . --base_checkpoint /path/to/base.pt`."
                 if form == "adapter" else
                 "Merged weights (LoRA folded in); self-contained. Sample with `python -m monai.bundle run "
                 "--config_file configs/inference.json --bundle_root .`.")
    readme = (f"# {name} ({form} form)\n\n{meta['description']}\n\n{base_line}\n\n"
              f"Preset: `{preset_name}`; conditions: {meta.get('conditions')}.\n\n"
              f"Verify offline: `busgen verify {name}.zip" + (" --base /path/to/base.pt`" if form == "adapter" else "`")
              + f".\n\nIntended use: {meta['intended_use']}\n")
    (root / "docs" / "README.md").write_text(readme)
    files = [model_name] + (["model.json"] if form == "merged" else []) + \
        (["box_prior.json"] if box_prior is not None else [])
    peft_dir = Path(adapter).parent / "peft_adapter" if form == "adapter" and adapter else None
    if peft_dir is not None and (peft_dir / "adapter_config.json").is_file():
        # the same adapter in peft's own format, for peft users (adapter_config.json + safetensors, no pickle)
        shutil.copytree(peft_dir, root / "models" / "peft_adapter")
        files += [f"peft_adapter/{p.name}" for p in sorted((root / "models" / "peft_adapter").iterdir()) if p.is_file()]
    entries = [f"  - path: models/{f}\n    url: ''\n    hash_val: {file_sha256(root / 'models' / f)}\n"
               "    hash_type: sha256\n" for f in files]
    (root / "large_files.yml").write_text("large_files:\n" + "".join(entries))
    zpath = None
    if make_zip:
        zpath = Path(out_dir) / f"{name}.zip"
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(root.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(root.parent).as_posix())
    return root, zpath


# ---------------------------------------------------------------------------------------------------- verification
def validate_metadata(meta_path: str | Path, schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate ``metadata.json`` as the model zoo's CI does, offline, then against the project's stricter schema.

    1. the ``schema`` field must be the published URL of the zoo's schema (:data:`ZOO_SCHEMA_URL`), and the metadata
       must pass that schema (the vendored copy ``resources/zoo/``, the same check as
       ``monai.bundle.verify_metadata``);
    2. then ``schema_path`` (default: the project's schema: name, data source, intended use, grey channel count...).

    Returns the metadata; raises :class:`BundleVerificationError` listing every failing key.
    """
    meta_path = Path(meta_path)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BundleVerificationError(f"{meta_path}: not readable JSON ({err})") from err
    if not isinstance(meta, Mapping):
        raise BundleVerificationError(f"{meta_path}: metadata must be a JSON object")
    if meta.get("schema") != ZOO_SCHEMA_URL:
        raise BundleVerificationError(f"{meta_path}: key 'schema' is {meta.get('schema')!r}; the model zoo needs the "
                                      f"published schema URL {ZOO_SCHEMA_URL!r}")
    problems = [line for schema_file in (ZOO_SCHEMA_PATH, Path(schema_path)) for line in _schema_errors(meta, schema_file)]
    if problems:  # every failing key of both schemas at once
        raise BundleVerificationError(f"{meta_path} does not match the metadata schemas:\n" + "\n".join(problems))
    return meta


def _schema_errors(meta: Mapping[str, Any], schema_file: Path) -> list[str]:
    import jsonschema

    schema = json.loads(Path(schema_file).read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(meta), key=lambda e: list(e.absolute_path))
    return [f"  key '{'/'.join(map(str, e.absolute_path)) or '<root>'}': {e.message} ({Path(schema_file).name})"
            for e in errors]


def check_large_files(root: str | Path) -> list[str]:
    """Check every file of ``large_files.yml`` exists and has its hash (sha256, or md5 / sha512 when the
    entry says so), and that every file in ``models/`` is listed (an unlisted file is refused: nothing
    unverified is loaded); returns the checked paths."""
    import yaml

    root = Path(root)
    lf = root / "large_files.yml"
    try:
        data = yaml.safe_load(lf.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise BundleVerificationError(f"{lf}: not readable YAML ({err})") from err
    checked = []
    entries = data.get("large_files", []) if isinstance(data, Mapping) else []
    for entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("path"), str):
            raise BundleVerificationError(f"{lf}: every entry needs a 'path' (got {entry!r:.80})")
        path = (root / entry["path"]).resolve()
        if not path.is_relative_to(root.resolve()):
            raise BundleVerificationError(f"{entry['path']}: large_files.yml points outside the bundle")
        if not path.is_file():
            raise BundleVerificationError(f"{entry['path']}: listed in large_files.yml but missing from the bundle")
        want = str(entry.get("hash_val", "")).strip().lower()
        kind = str(entry.get("hash_type", "sha256")).strip().lower()
        if kind not in ("sha256", "sha512", "md5"):
            raise BundleVerificationError(f"{entry['path']}: hash_type {kind!r} is not supported (use sha256)")
        if not want:
            raise BundleVerificationError(f"{entry['path']}: large_files.yml gives no hash_val")
        got = file_hash(path, kind)
        if got != want:
            raise BundleVerificationError(
                f"{entry['path']}: its {kind} is {got} but large_files.yml says {want}; the file was modified or "
                "corrupted - re-download or re-package the bundle")
        checked.append(entry["path"])
    if not checked:
        raise BundleVerificationError(f"{lf}: lists no model files")
    listed = {(root / p).resolve() for p in checked}
    models = root / "models"
    unlisted = sorted(p.relative_to(root).as_posix() for p in models.rglob("*")
                      if p.is_file() and p.resolve() not in listed) if models.is_dir() else []
    if unlisted:
        raise BundleVerificationError(f"{unlisted[0]}: in models/ but not listed (with its hash) in large_files.yml; "
                                      "an unlisted file is refused - re-package the bundle or remove the file")
    return checked


def _parser(root: Path, overrides: Mapping[str, Any]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    for k, v in overrides.items():
        parser[k] = v
    return parser


def check_network_shapes(root: str | Path, meta: Mapping[str, Any], overrides: Mapping[str, Any] | None = None):
    """Instantiate the network from the inference config and feed inputs shaped per ``network_data_format``."""
    import torch

    root = Path(root)
    parser = _parser(root, {"device": "$torch.device('cpu')", **(overrides or {})})
    try:
        network = parser.get_parsed_content("network")
    except Exception as err:  # noqa: BLE001
        raise BundleVerificationError(f"{root / 'configs/inference.json'}: cannot build 'network': {err}") from err
    nd = meta["network_data_format"]
    img = nd["inputs"]["image"]
    x = torch.randn(1, int(img["num_channels"]), *map(int, img["spatial_shape"]))
    t = torch.zeros(1, dtype=torch.long)
    ctx = None
    if "context" in nd["inputs"]:
        ctx = -torch.ones(1, 1, *map(int, nd["inputs"]["context"]["spatial_shape"]))
    with torch.no_grad():
        try:
            y = network.eval()(x, timesteps=t, context=ctx)
        except Exception as err:  # noqa: BLE001
            raise BundleVerificationError(
                f"configs/metadata.json network_data_format inputs {tuple(x.shape)} do not run through the network: {err}") from err
    out = nd["outputs"]["pred"]
    want = (1, int(out["num_channels"]), *map(int, out["spatial_shape"]))
    if tuple(y.shape) != want:
        raise BundleVerificationError(
            f"configs/metadata.json network_data_format/outputs/pred: expected shape {want}, network gives {tuple(y.shape)}")
    return tuple(y.shape)


def zoo_net_in_out(root: str | Path, meta: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> str:
    """The model zoo's own shape check, ``monai.bundle.verify_net_in_out``, on ``network_def`` of the bundle's
    inference config, with the diffusion network's extra forward arguments (a timestep and a null condition tensor
    shaped per ``network_data_format``)."""
    import torch
    from monai.bundle import verify_net_in_out

    root = Path(root)
    nd = meta["network_data_format"]["inputs"]
    extra = {"timesteps": torch.zeros(1, dtype=torch.long)}
    if "context" in nd:
        extra["context"] = -torch.ones(1, 1, *map(int, nd["context"]["spatial_shape"]))
    try:
        verify_net_in_out(net_id="network_def", meta_file=str(root / "configs" / "metadata.json"),
                          config_file=str(root / "configs" / "inference.json"), device="cpu",
                          extra_forward_args=extra, bundle_root=str(root), **dict(overrides or {}))
    except Exception as err:  # noqa: BLE001 - one message naming the check
        raise BundleVerificationError(f"{root / 'configs/inference.json'}: monai.bundle.verify_net_in_out failed: "
                                      f"{err}") from err
    return "ok"


def _bundle_root(path: Path, workdir: Path) -> Path:
    if path.is_dir():
        dst = workdir / path.name
        shutil.copytree(path, dst)
        return dst
    try:
        with zipfile.ZipFile(path) as zf:
            zf.extractall(workdir)
    except zipfile.BadZipFile as err:
        raise BundleVerificationError(f"{path}: not a zip file ({err})") from err
    tops = [p for p in workdir.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise BundleVerificationError(f"{path}: expected one top-level bundle folder, found {[p.name for p in tops]}")
    return tops[0]


def verify_bundle(path: str | Path, base_checkpoint: str | Path | None = None, sample: bool = True,
                  num_images: int = 2, num_inference_steps: int = 2) -> dict[str, Any]:
    """Verify a bundle folder or zip offline; returns a report dict, raises :class:`BundleVerificationError`.

    The bundle is copied/extracted into a fresh temp folder first, so the round trip proves the package is
    self-contained (plus the base checkpoint for the adapter form, passed as ``base_checkpoint``).
    """
    path = Path(path)
    if not path.exists():
        raise BundleVerificationError(f"{path} does not exist")
    report: dict[str, Any] = {"bundle": str(path)}
    with tempfile.TemporaryDirectory(prefix="busgen_verify_") as tmp:
        root = _bundle_root(path, Path(tmp) / "bundle")
        missing = [f for f in _REQUIRED if not (root / f).is_file()]
        if missing:
            raise BundleVerificationError(f"{path}: missing required files {missing}")
        meta = validate_metadata(root / "configs" / "metadata.json")
        report["metadata"] = "ok"
        report["large_files"] = check_large_files(root)
        # nothing of an unverified bundle's config is evaluated before this static check passes
        from .bundle_check import BundleConfigError, check_config_static

        try:
            report["config_expressions_checked"] = check_config_static(sorted((root / "configs").glob("*.json")),
                                                                       root)
        except BundleConfigError as err:
            raise BundleVerificationError(f"{path}: {err}") from None
        overrides: dict[str, Any] = {}
        if meta.get("bundle_form") == "adapter" or "base_model" in meta:
            if base_checkpoint is None:
                raise BundleVerificationError(
                    f"{path} is an adapter-only bundle (base {meta.get('base_model')}); pass the base checkpoint (--base)")
            want = meta["base_model"]["sha256"]
            if want and file_sha256(Path(base_checkpoint)) != want:
                raise BundleVerificationError(
                    f"base checkpoint {base_checkpoint} has sha256 {file_sha256(Path(base_checkpoint))}, "
                    f"configs/metadata.json base_model/sha256 expects {want}")
            overrides["base_checkpoint"] = str(Path(base_checkpoint).resolve())
        report["net_in_out"] = check_network_shapes(root, meta, overrides)
        report["zoo_verify_net_in_out"] = zoo_net_in_out(root, meta, overrides)
        if sample:
            out = Path(tmp) / "samples"
            parser = _parser(root, {**overrides, "device": "$torch.device('cpu')", "output_dir": str(out),
                                    "num_images": int(num_images), "num_inference_steps": int(num_inference_steps),
                                    "progress": False, "chunk_size": int(num_images)})
            try:
                for expr in parser.get_parsed_content("run"):
                    pass
            except Exception as err:  # noqa: BLE001
                raise BundleVerificationError(f"{path}: sampling with configs/inference.json failed: {err}") from err
            dl = json.loads((out / "datalist.json").read_text())
            n = sum(1 for v in dl.values() if isinstance(v, list) for it in v if isinstance(it, dict))
            if n < 1:
                raise BundleVerificationError(f"{path}: the sampling round trip produced no images")
            report["sampled"] = n
    return report
