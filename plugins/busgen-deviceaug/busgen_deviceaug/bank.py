"""Translator bank: one trained generator per target device, indexed by ``bank.json``.

Layout of a bank folder::

    bank/
      bank.json                       the index (below)
      translators/GE-LOGIQ-7.pt       generator state dict (any source -> GE-LOGIQ-7)
      runs/GE-LOGIQ-7/...             training run of that translator (checkpoints, sample grids, losses)

``bank.json``::

    {"format": "busgen-deviceaug-bank", "version": 1,
     "translators": {
        "GE-LOGIQ-7": {
            "weights": "translators/GE-LOGIQ-7.pt",        # relative to the bank folder
            "sha256": "...",                                # of the weights file
            "network": {"_target_": "busgen_deviceaug.networks.CycleGANGenerator", "channels": 32, ...},
            "spatial_size": [64, 64],                       # size the generator was trained at
            "color": false,                                 # target style is greyscale (channels equalised)
            "value_range": [-1, 1],                         # generator input/output range
            "source_devices": ["GE-LOGIQ-5", ...],
            "provenance": {"bundle": "device_cyclegan", "bundle_version": "0.1.0", "datalist": "...",
                           "datalist_sha256": "...", "iterations": 1200, "epochs": 10, "created": "..."}}}}

:class:`TranslatorBank` reads a bank and translates images; :func:`train_bank` (``busgen device-bank``) trains
one translator per target device in turn with the ``device_cyclegan`` bundle (as BUSGen does for its 18
devices) and adds each to the bank; it is resumable (targets already in the bank are skipped).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from busgen_monai.utils.io import atomic_copy, atomic_torch_save
from busgen_monai.utils.io import file_sha256 as sha256_file  # the plugin's public name for it, kept

__all__ = [
    "BANK_FORMAT",
    "BANK_VERSION",
    "BankError",
    "TranslatorBank",
    "bundle_path",
    "safe_name",
    "sha256_file",
    "train_bank",
    "main",
]

BANK_FORMAT = "busgen-deviceaug-bank"
BANK_VERSION = 1
logger = logging.getLogger(__name__)


class BankError(ValueError):
    """A translator bank is missing, malformed, or lacks the requested device."""


def safe_name(device: str) -> str:
    """File-name-safe version of a device name (``GE LOGIQ/7`` -> ``GE_LOGIQ_7``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", device).strip("_") or "device"


def bundle_path() -> Path:
    """Folder of the ``device_cyclegan`` bundle shipped with this plugin."""
    return Path(__file__).resolve().parent / "bundles" / "device_cyclegan"


class TranslatorBank:
    """Read a translator bank and translate images with its generators.

    Generators are built and loaded lazily (first use per device and torch device) and cached; a pickled bank
    (DataLoader workers) drops the cache and reloads in the worker.

    Args:
        root: the bank folder, or its ``bank.json``.
        map_location: where weights are loaded (default CPU).

    Raises:
        BankError: no ``bank.json``, wrong format, or an entry without ``weights``/``network``/``spatial_size``.
    """

    def __init__(self, root: str | os.PathLike, map_location: str = "cpu") -> None:
        root = Path(root)
        if root.name == "bank.json":
            root = root.parent
        self.root = root
        self.index_path = root / "bank.json"
        self.map_location = map_location
        if not self.index_path.is_file():
            raise BankError(f"translator bank {root}: no bank.json (train one with `busgen device-bank` or "
                            f"TranslatorBank.create)")
        try:
            index = json.loads(self.index_path.read_text())
        except json.JSONDecodeError as err:
            raise BankError(f"translator bank {self.index_path}: not valid JSON: {err}") from err
        if index.get("format") != BANK_FORMAT or int(index.get("version", 0)) > BANK_VERSION:
            raise BankError(f"{self.index_path}: not a {BANK_FORMAT} index of version <= {BANK_VERSION} "
                            f"(format={index.get('format')!r}, version={index.get('version')!r})")
        problems = []
        for dev, entry in (index.get("translators") or {}).items():
            for key in ("weights", "network", "spatial_size"):
                if key not in entry:
                    problems.append(f"translator {dev!r} lacks {key!r}")
        if problems:
            raise BankError(f"{self.index_path}: " + "; ".join(problems))
        self.index = index
        self._cache: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, root: str | os.PathLike, description: str = "") -> TranslatorBank:
        """Create an empty bank folder (or open the existing one)."""
        from busgen_monai.data.schema import atomic_write_text

        root = Path(root)
        if not (root / "bank.json").is_file():
            root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(root / "bank.json", json.dumps(
                {"format": BANK_FORMAT, "version": BANK_VERSION, "description": description, "translators": {}},
                indent=2) + "\n")
        return cls(root)

    def add(
        self,
        device: str,
        generator: Any,
        spatial_size: Sequence[int],
        network: Mapping[str, Any] | None = None,
        color: bool = True,
        source_devices: Sequence[str] = (),
        provenance: Mapping[str, Any] | None = None,
    ) -> dict:
        """Add (or replace) the translator of ``device``.

        Args:
            device: target device name.
            generator: a generator module (with ``.config`` like :class:`CycleGANGenerator`), or a path to a
                state-dict file (then ``network`` is required).
            spatial_size: size the generator works at (H, W).
            network: ``{"_target_": ..., **kwargs}`` to rebuild the generator (default: from ``generator.config``).
            color: whether the target style is colour; greyscale styles get equal channels on output.
            source_devices: devices the translator was trained from.
            provenance: free-form record (bundle, datalist, iterations, ...).

        Returns:
            the new ``bank.json`` entry.
        """
        from busgen_monai.data.schema import atomic_write_text

        rel = Path("translators") / f"{safe_name(device)}.pt"
        dst = self.root / rel
        if isinstance(generator, (str, os.PathLike)):
            if network is None:
                raise BankError("add(): a weights file needs `network` to rebuild the generator")
            atomic_copy(generator, dst)
        else:
            if network is None:
                cfg = getattr(generator, "config", None)
                if cfg is None:
                    raise BankError("add(): the generator has no .config; pass `network`")
                network = {"_target_": f"{type(generator).__module__}.{type(generator).__qualname__}", **cfg}
            state = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
            atomic_torch_save(state, dst)
        entry = {
            "weights": rel.as_posix(),
            "sha256": sha256_file(dst),
            "network": dict(network),
            "spatial_size": [int(s) for s in spatial_size],
            "color": bool(color),
            "value_range": [-1, 1],
            "source_devices": sorted(source_devices),
            "provenance": dict(provenance or {}),
        }
        index = json.loads(self.index_path.read_text())  # re-read: another process may have added a device
        index.setdefault("translators", {})[device] = entry
        atomic_write_text(self.index_path, json.dumps(index, indent=2) + "\n")
        self.index = index
        self._cache = {k: v for k, v in self._cache.items() if k[0] != device}
        return entry

    # ------------------------------------------------------------------ reading
    @property
    def devices(self) -> list[str]:
        """Target devices the bank can translate to."""
        return list((self.index.get("translators") or {}).keys())

    def __contains__(self, device: object) -> bool:
        return device in (self.index.get("translators") or {})

    def __len__(self) -> int:
        return len(self.devices)

    def entry(self, device: str) -> dict:
        """The ``bank.json`` entry of ``device``."""
        try:
            return self.index["translators"][device]
        except KeyError:
            raise BankError(f"translator bank {self.root} has no translator for device {device!r}; "
                            f"it has {self.devices}") from None

    def weights_path(self, device: str) -> Path:
        p = Path(self.entry(device)["weights"])
        return p if p.is_absolute() else self.root / p

    def generator_hash(self, device: str) -> str:
        """sha256 of the device's weights (from ``bank.json``; computed when absent)."""
        e = self.entry(device)
        return e.get("sha256") or sha256_file(self.weights_path(device))

    def spatial_size(self, device: str) -> tuple[int, int]:
        return tuple(int(s) for s in self.entry(device)["spatial_size"])  # type: ignore[return-value]

    def is_color(self, device: str) -> bool:
        return bool(self.entry(device).get("color", True))

    def generator(self, device: str, torch_device: Any = "cpu") -> Any:
        """The generator of ``device`` in eval mode on ``torch_device`` (built and loaded once, then cached)."""
        import torch

        from .networks import build_generator

        key = (device, str(torch_device))
        if key not in self._cache:
            entry = self.entry(device)
            path = self.weights_path(device)
            if not path.is_file():
                raise BankError(f"translator bank {self.root}: weights of {device!r} missing at {path}")
            net = build_generator(entry["network"])
            state = torch.load(path, map_location=self.map_location, weights_only=True)
            state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DDP
            net.load_state_dict(state)
            self._cache[key] = net.to(torch_device).eval()
        return self._cache[key]

    def translate(self, images: Any, device: str, torch_device: Any = "cpu", resize: bool = True) -> Any:
        """Translate a batch ``(B, C, H, W)`` in [-1, 1] to ``device``'s style.

        The batch is resized (bilinear, antialiased) to the translator's ``spatial_size``, translated and resized
        back to ``(H, W)`` when ``resize`` (otherwise H and W must suit the generator). One-channel input is
        replicated to the generator's input channels. For greyscale target styles the output channels are
        replaced by their mean.

        Returns:
            float tensor ``(B, out_channels, H, W)`` in [-1, 1] on ``torch_device``.
        """
        import torch
        import torch.nn.functional as F

        net = self.generator(device, torch_device)
        x = torch.as_tensor(images, dtype=torch.float32, device=torch_device)
        if x.ndim != 4:
            raise ValueError(f"translate expects (B, C, H, W), got shape {tuple(x.shape)}")
        in_ch = int(self.entry(device)["network"].get("in_channels", 3))
        if x.shape[1] == 1 and in_ch != 1:
            x = x.expand(-1, in_ch, -1, -1)
        if x.shape[1] != in_ch:
            raise ValueError(f"translator {device!r} takes {in_ch} channels, got {x.shape[1]}")
        hw = tuple(x.shape[2:])
        size = self.spatial_size(device)
        if resize and hw != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            y = net(x)
        if resize and hw != size:
            y = F.interpolate(y, size=hw, mode="bilinear", align_corners=False, antialias=True)
        if not self.is_color(device):
            y = y.mean(dim=1, keepdim=True).expand_as(y).contiguous()
        return y.clamp(-1.0, 1.0)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def __repr__(self) -> str:
        return f"TranslatorBank({str(self.root)!r}, devices={self.devices})"


# ---------------------------------------------------------------------------------------------- driver
def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def train_bank(
    datalist: str | os.PathLike,
    out_dir: str | os.PathLike,
    targets: Sequence[str] | None = None,
    source_devices: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    config: str | Sequence[str] = "train",
    force: bool = False,
) -> TranslatorBank:
    """Train one "any source -> target" translator per target device with the ``device_cyclegan`` bundle.

    Each target is trained in turn (``monai.bundle.ConfigWorkflow`` on ``configs/train.json``) into
    ``out_dir/runs/<target>``, then its generator is added to the bank ``out_dir/bank.json``. Targets already in
    the bank are skipped unless ``force`` (so an interrupted bank resumes; an interrupted target resumes from
    its last epoch checkpoint).

    Args:
        datalist: datalist with device labels.
        out_dir: bank folder.
        targets: target devices (default: every device of the datalist's training split except ``unknown``).
        source_devices: restrict domain A to these devices (default: all non-target devices).
        overrides: extra bundle config overrides, e.g. ``{"spatial_size": [64, 64], "num_epochs": 5}``.
        config: bundle config name(s) (``train``) or paths.
        force: retrain targets already in the bank.
    """
    from monai.bundle import ConfigWorkflow

    from busgen_monai.data.schema import load_datalist

    from .data import EXCLUDED_DEVICES, domain_items, is_color_domain, split_domains

    datalist = Path(datalist).resolve()
    out = Path(out_dir)
    bank = TranslatorBank.create(out, description=f"device translators trained on {datalist.name}")
    data = load_datalist(datalist, check_files=False)
    overrides = dict(overrides or {})
    splits = overrides.get("splits", ["training"])
    if targets is None:
        items, _ = domain_items(data, splits)
        targets = sorted({it["device"] for it in items if it.get("device") not in EXCLUDED_DEVICES})
    bundle = bundle_path()
    names = [config] if isinstance(config, str) else list(config)
    config_files = []
    for name in names:
        p = Path(name)
        config_files.append(str(p if p.suffix in (".json", ".yaml", ".yml") else bundle / "configs" / f"{name}.json"))
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    dl_hash = sha256_file(datalist)
    for target in targets:
        if target in bank and not force:
            logger.info("translator for %s already in the bank; skipped (force=True retrains)", target)
            continue
        items_a, items_b = split_domains(data, target, source_devices, splits)
        run_dir = out / "runs" / safe_name(target)
        wf = ConfigWorkflow(
            config_file=config_files if len(config_files) > 1 else config_files[0],
            meta_file=str(bundle / "configs" / "metadata.json"),
            logging_file=str(bundle / "configs" / "logging.conf"),
            workflow_type="train",
            bundle_root=str(bundle),
            datalist=str(datalist),
            target_device=target,
            source_devices=list(source_devices) if source_devices else None,
            output_dir=str(run_dir),
            **overrides,
        )
        wf.initialize()
        wf.run()
        trainer = wf.parser.get_parsed_content("train#trainer")
        generator = wf.parser.get_parsed_content("network_def")
        spatial_size = wf.parser.get_parsed_content("spatial_size")
        wf.finalize()
        bank.add(
            target,
            generator,
            spatial_size=spatial_size,
            color=is_color_domain(items_b),
            source_devices=sorted({it["device"] for it in items_a}),
            provenance={
                "bundle": "device_cyclegan",
                "bundle_version": meta.get("version"),
                "datalist": datalist.name,
                "datalist_sha256": dl_hash,
                "splits": list(splits),
                "n_source_images": len(items_a),
                "n_target_images": len(items_b),
                "iterations": int(trainer.state.iteration),
                "epochs": int(trainer.state.epoch),
                "run_dir": os.path.relpath(run_dir, out),
                "overrides": {k: v for k, v in overrides.items() if isinstance(v, (str, int, float, bool, list))},
                "created": _utc_now(),
            },
        )
        logger.info("added translator -> %s to %s", target, bank.index_path)
    return TranslatorBank(out)


def main(argv: Sequence[str] | None = None) -> int:
    """``busgen device-bank DATALIST OUT [--targets A,B] [--sources C] [--key value ...]``."""
    p = argparse.ArgumentParser(
        prog="busgen device-bank",
        description="Train one CycleGAN translator per target device (device_cyclegan bundle) into a bank folder "
        "with a bank.json index. Resumable: targets already in the bank are skipped. Extra --key value pairs "
        "override bundle config entries (values parsed as JSON), e.g. --spatial_size [64,64] --num_epochs 5.")
    p.add_argument("datalist", help="datalist JSON with device labels")
    p.add_argument("out", help="bank folder to create/extend")
    p.add_argument("--targets", default=None, help="comma list of target devices (default: every device)")
    p.add_argument("--sources", default=None, help="comma list of source devices (default: all non-target)")
    p.add_argument("--force", action="store_true", help="retrain targets already in the bank")
    args, extra = p.parse_known_args(list(argv) if argv is not None else None)
    from busgen_monai.bundle_run import parse_overrides

    overrides = parse_overrides(extra)
    bank = train_bank(args.datalist, args.out,
                      targets=args.targets.split(",") if args.targets else None,
                      source_devices=args.sources.split(",") if args.sources else None,
                      overrides=overrides, force=args.force)
    print(f"bank {bank.index_path}: {', '.join(bank.devices)}")
    return 0
