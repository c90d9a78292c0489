"""Device vocabulary: map ultrasound scanner names to stable integer device ids.

BUSGen conditions its generator on the device type (18 devices from 9 manufacturers). Real data names a
device in many ways: ``"GE Logiq 7 @10-14MHz"`` in a BUS-BRA CSV, ``Manufacturer="GE Healthcare"`` plus
``ManufacturerModelName="LOGIQ E9"`` in a DICOM header, ``"GE-LOGIQ-E9"`` in BUSGen's code. The
:class:`DeviceVocabulary` turns all of them into one canonical name and one integer id.

Ids are stable: ``0`` is always the null (unconditional) device, BUSGen's 18 devices are ``1..18`` in the
order of the public BUSGen code, further built-in devices follow, and devices added by a user file come
after the built-in ones (or take the ``id`` they declare). An unknown name raises
:class:`UnknownDeviceError` naming the device and the fix; loaders can instead collect unknown names in a
report (``on_unknown="null"``) or append them to the vocabulary (``on_unknown="add"``), never dropping
them silently.

User file format (JSON or YAML)::

    devices:
      - name: Hitachi-ARIETTA-850
        manufacturer: Hitachi
        model: ARIETTA 850
        aliases: ["Arietta 850", "HI VISION Arietta"]
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "NULL_DEVICE",
    "UNKNOWN_DEVICE",
    "BUSGEN_DEVICES",
    "DeviceEntry",
    "DeviceVocabulary",
    "UnknownDeviceError",
    "normalize_device_name",
    "default_vocabulary",
]

NULL_DEVICE = "null"
UNKNOWN_DEVICE = "unknown"

#: BUSGen's 18 device types, ids 1..18 in this order (public BUSGen code).
BUSGEN_DEVICES: tuple[tuple[str, str, str], ...] = (
    ("Siemens-ACUSON-Oxana", "Siemens", "ACUSON Oxana"),
    ("GE-LOGIQ-E9", "GE", "LOGIQ E9"),
    ("Esaote-MyLab90", "Esaote", "MyLab90"),
    ("Esaote-MyLabClassC", "Esaote", "MyLabClassC"),
    ("Philips-EPIQ7", "Philips", "EPIQ 7"),
    ("Sonoscape-S60", "Sonoscape", "S60"),
    ("GE-EDVoluson-E8-Expert", "GE", "Voluson E8 Expert"),
    ("Samsung-RS80A", "Samsung", "RS80A"),
    ("Sonoscape-Clinic", "Sonoscape", "Clinic"),
    ("TOSHIBA-Aplio-i700", "Toshiba", "Aplio i700"),
    ("Mindray-M9", "Mindray", "M9"),
    ("Canon-Aplio-i800", "Canon", "Aplio i800"),
    ("Siemens-ACUSON-NX3-Elite", "Siemens", "ACUSON NX3 Elite"),
    ("VINNO-G86", "VINNO", "G86"),
    ("Mindray-Resona-R9", "Mindray", "Resona R9"),
    ("Mindray-NuewaI9", "Mindray", "Nuewa I9"),
    ("Mindray-Resona7", "Mindray", "Resona 7"),
    ("Samsung-Heraw10", "Samsung", "HERA W10"),
)

#: Further built-in devices (ids 19..): BUS-BRA's scanners, common breast scanners, and the phantom's styles.
EXTRA_DEVICES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("GE-LOGIQ-7", "GE", "LOGIQ 7", ()),
    ("GE-LOGIQ-5", "GE", "LOGIQ 5", ()),
    ("TOSHIBA-Aplio-300", "Toshiba", "Aplio 300", ()),
    ("U-Systems", "U-Systems", "somo-v", ("U-Systems", "U-Systems somo-v ABUS")),
    ("GE-LOGIQ-E10", "GE", "LOGIQ E10", ()),
    ("Siemens-ACUSON-S2000", "Siemens", "ACUSON S2000", ()),
    ("Philips-iU22", "Philips", "iU22", ()),
    ("Philips-EPIQ5", "Philips", "EPIQ 5", ()),
    ("GE-LOGIQ-700", "GE", "LOGIQ 700", ()),
    ("Siemens-ACUSON-Sequoia", "Siemens", "ACUSON Sequoia", ("Acuson Sequoia",)),
    ("PhantomMed-L7", "PhantomMed", "L7", ()),
    ("PhantomMed-L12", "PhantomMed", "L12", ()),
    ("PhantomMed-C5", "PhantomMed", "C5", ()),
    ("PhantomMed-T9", "PhantomMed", "T9", ()),
)

# Manufacturer spellings found in DICOM headers and CSVs, reduced to one short token.
_MANUFACTURER_TOKENS = {
    "gehealthcare": "ge",
    "gemedicalsystems": "ge",
    "gemedicalsystemskretztechnik": "ge",
    "generalelectric": "ge",
    "ge": "ge",
    "kretztechnik": "ge",
    "siemens": "siemens",
    "siemenshealthineers": "siemens",
    "siemensmedicalsolutions": "siemens",
    "siemensmedicalsolutionsusainc": "siemens",
    "acuson": "siemens",
    "philips": "philips",
    "philipsmedicalsystems": "philips",
    "philipshealthcare": "philips",
    "philipsultrasound": "philips",
    "toshiba": "toshiba",
    "toshibamedicalsystems": "toshiba",
    "toshibamedicalsystemscorporation": "toshiba",
    "canon": "canon",
    "canonmedicalsystems": "canon",
    "canonmedicalsystemscorporation": "canon",
    "esaote": "esaote",
    "esaotespa": "esaote",
    "mindray": "mindray",
    "shenzhenmindray": "mindray",
    "samsung": "samsung",
    "samsungmedison": "samsung",
    "samsungmedisoncoltd": "samsung",
    "sonoscape": "sonoscape",
    "sonoscapemedicalcorp": "sonoscape",
    "vinno": "vinno",
    "vinnotechnology": "vinno",
    "usystems": "usystems",
    "phantommed": "phantommed",
}

_FREQ_SUFFIX = re.compile(r"@.*$")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def normalize_device_name(name: str) -> str:
    """Reduce a device name to a comparison key: lower case, frequency suffix (``@10-14MHz``) and
    punctuation removed. ``"GE Logiq 7 @10-14MHz"`` and ``"GE-LOGIQ-7"`` both give ``"gelogiq7"``."""
    return _NON_ALNUM.sub("", _FREQ_SUFFIX.sub("", str(name)).lower())


def _manufacturer_token(manufacturer: str) -> str:
    key = normalize_device_name(manufacturer)
    if key in _MANUFACTURER_TOKENS:
        return _MANUFACTURER_TOKENS[key]
    for long_key, token in _MANUFACTURER_TOKENS.items():
        if len(long_key) > 3 and key.startswith(long_key):
            return token
    return key


class UnknownDeviceError(KeyError):
    """A device name that the vocabulary does not know. The message names the device and the fix."""

    def __init__(self, name: str, context: str = ""):
        self.name = name
        where = f" ({context})" if context else ""
        msg = (
            f"unknown ultrasound device {name!r}{where}. Add it to a device vocabulary file "
            "(devices: [{name: ..., manufacturer: ..., model: ..., aliases: [...]}]) and pass it with "
            "--device-vocab, or choose on_unknown='add' / 'null' to register it or record it as 'unknown'."
        )
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class DeviceEntry:
    """One device type: canonical name, integer id, manufacturer/model as found in DICOM, aliases."""

    name: str
    id: int
    manufacturer: str = ""
    model: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    builtin: bool = True

    def keys(self) -> set[str]:
        keys = {normalize_device_name(self.name)}
        keys.update(normalize_device_name(a) for a in self.aliases)
        if self.model:
            token = _manufacturer_token(self.manufacturer)
            model_key = normalize_device_name(self.model)
            keys.add(token + model_key)
            keys.add(normalize_device_name(self.manufacturer) + model_key)
        keys.discard("")
        return keys


class DeviceVocabulary:
    """Canonical device names <-> integer ids, with alias matching.

    Args:
        entries: device entries; ids must be unique and >= 1 (0 is the null device).

    Example::

        vocab = default_vocabulary()
        vocab.lookup("GE Logiq 7 @10-14MHz")            # 'GE-LOGIQ-7'
        vocab.lookup_dicom("GE Healthcare", "LOGIQ E9")  # 'GE-LOGIQ-E9'
        vocab.id_of("GE-LOGIQ-E9")                       # 2
    """

    def __init__(self, entries: Iterable[DeviceEntry]):
        self._entries: dict[str, DeviceEntry] = {}
        self._by_id: dict[int, DeviceEntry] = {}
        self._keys: dict[str, str] = {}
        self._model_keys: dict[str, set[str]] = {}
        for entry in entries:
            self._register(entry)

    # ------------------------------------------------------------------ construction
    def _register(self, entry: DeviceEntry) -> None:
        if entry.id < 1:
            raise ValueError(f"device {entry.name!r}: id must be >= 1 (0 is the null device), got {entry.id}")
        if entry.name in self._entries:
            raise ValueError(f"device {entry.name!r} is declared twice in the vocabulary")
        if entry.id in self._by_id:
            raise ValueError(
                f"device {entry.name!r}: id {entry.id} is already used by {self._by_id[entry.id].name!r}"
            )
        for key in entry.keys():
            other = self._keys.get(key)
            if other is not None and other != entry.name:
                raise ValueError(f"device {entry.name!r}: alias {key!r} already names {other!r}")
        self._entries[entry.name] = entry
        self._by_id[entry.id] = entry
        for key in entry.keys():
            self._keys[key] = entry.name
        if entry.model:
            self._model_keys.setdefault(normalize_device_name(entry.model), set()).add(entry.name)

    def add(self, name: str, manufacturer: str = "", model: str = "", aliases: Iterable[str] = (),
            id: int | None = None) -> DeviceEntry:
        """Register a new device after the existing ones (or with an explicit ``id``) and return it."""
        new_id = id if id is not None else (max(self._by_id, default=0) + 1)
        entry = DeviceEntry(name=name, id=int(new_id), manufacturer=manufacturer, model=model,
                            aliases=tuple(aliases), builtin=False)
        self._register(entry)
        return entry

    @classmethod
    def from_file(cls, path: str | Path, base: DeviceVocabulary | None = None) -> DeviceVocabulary:
        """Load user devices from a JSON/YAML file on top of ``base`` (default: the built-in vocabulary)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"device vocabulary file {path} does not exist")
        text = path.read_text()
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as err:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"device vocabulary file {path} is not valid JSON/YAML: {err}") from err
        if not isinstance(data, Mapping) or not isinstance(data.get("devices"), list):
            raise ValueError(f"device vocabulary file {path}: expected a mapping with a 'devices' list")
        vocab = (base or default_vocabulary()).copy()
        for i, dev in enumerate(data["devices"]):
            if not isinstance(dev, Mapping) or not dev.get("name"):
                raise ValueError(f"device vocabulary file {path}: devices[{i}] needs at least a 'name'")
            unknown = set(dev) - {"name", "manufacturer", "model", "aliases", "id"}
            if unknown:
                raise ValueError(f"device vocabulary file {path}: devices[{i}] has unknown keys {sorted(unknown)}")
            try:
                vocab.add(dev["name"], dev.get("manufacturer", ""), dev.get("model", ""),
                          dev.get("aliases", ()), dev.get("id"))
            except ValueError as err:
                raise ValueError(f"device vocabulary file {path}: devices[{i}]: {err}") from err
        return vocab

    def copy(self) -> DeviceVocabulary:
        return DeviceVocabulary(
            DeviceEntry(e.name, e.id, e.manufacturer, e.model, tuple(e.aliases), e.builtin) for e in self.entries
        )

    # ------------------------------------------------------------------ queries
    @property
    def entries(self) -> list[DeviceEntry]:
        return sorted(self._entries.values(), key=lambda e: e.id)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def num_embeddings(self) -> int:
        """Size of an embedding table indexed by device id (null id 0 included)."""
        return max(self._by_id, default=0) + 1

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None

    def find(self, name: str) -> str | None:
        """Canonical name for ``name`` or ``None`` when it is unknown."""
        if name in self._entries:
            return name
        key = normalize_device_name(name)
        if not key:
            return None
        return self._keys.get(key)

    def lookup(self, name: str, context: str = "") -> str:
        """Canonical name for ``name``; raises :class:`UnknownDeviceError` when unknown."""
        found = self.find(name)
        if found is None:
            raise UnknownDeviceError(name, context)
        return found

    def find_dicom(self, manufacturer: str | None, model: str | None) -> str | None:
        """Canonical name from DICOM ``Manufacturer`` and ``ManufacturerModelName``, or ``None``."""
        manufacturer = (manufacturer or "").strip()
        model = (model or "").strip()
        candidates = []
        if model:
            model_key = normalize_device_name(model)
            candidates += [_manufacturer_token(manufacturer) + model_key, normalize_device_name(manufacturer) + model_key,
                           model_key]
        if manufacturer and not model:
            candidates.append(normalize_device_name(manufacturer))
        for key in candidates:
            if key in self._keys:
                return self._keys[key]
        if model:
            names = self._model_keys.get(normalize_device_name(model), set())
            if len(names) == 1:
                return next(iter(names))
        return None

    def lookup_dicom(self, manufacturer: str | None, model: str | None, context: str = "") -> str:
        found = self.find_dicom(manufacturer, model)
        if found is None:
            raise UnknownDeviceError(f"{manufacturer or '?'} / {model or '?'}", context)
        return found

    def id_of(self, name: str) -> int:
        """Integer id of a device (0 for ``null``/``unknown``: the unconditional value)."""
        if name in (NULL_DEVICE, UNKNOWN_DEVICE, "", None):
            return 0
        return self._entries[self.lookup(name)].id

    def name_of(self, device_id: int) -> str:
        if int(device_id) == 0:
            return NULL_DEVICE
        if int(device_id) not in self._by_id:
            raise KeyError(f"no device with id {device_id}; ids run 1..{self.num_embeddings - 1}")
        return self._by_id[int(device_id)].name

    def to_dict(self) -> dict:
        """Serialisable form (stored with trained bundles so ids are reproducible)."""
        return {
            "devices": [
                {"name": e.name, "id": e.id, "manufacturer": e.manufacturer, "model": e.model,
                 "aliases": list(e.aliases)}
                for e in self.entries
            ]
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> DeviceVocabulary:
        return cls(
            DeviceEntry(d["name"], int(d["id"]), d.get("manufacturer", ""), d.get("model", ""),
                        tuple(d.get("aliases", ())), builtin=False)
            for d in data["devices"]
        )


def default_vocabulary() -> DeviceVocabulary:
    """The built-in vocabulary: BUSGen's 18 devices (ids 1..18), then the extra built-in devices."""
    entries = [DeviceEntry(name, i + 1, manu, model) for i, (name, manu, model) in enumerate(BUSGEN_DEVICES)]
    start = len(entries) + 1
    entries += [
        DeviceEntry(name, start + i, manu, model, aliases)
        for i, (name, manu, model, aliases) in enumerate(EXTRA_DEVICES)
    ]
    return DeviceVocabulary(entries)
