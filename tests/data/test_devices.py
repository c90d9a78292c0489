import json

import pytest

from busgen_monai.data.devices import (
    BUSGEN_DEVICES,
    DeviceVocabulary,
    UnknownDeviceError,
    default_vocabulary,
    normalize_device_name,
)


def test_busgen_devices_have_ids_1_to_18_and_null_is_0():
    vocab = default_vocabulary()
    assert [vocab.id_of(name) for name, _, _ in BUSGEN_DEVICES] == list(range(1, 19))
    assert vocab.id_of("null") == 0 and vocab.id_of("unknown") == 0
    assert vocab.name_of(0) == "null"
    assert vocab.num_embeddings == len(vocab) + 1


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("GE Logiq 7 @10-14MHz", "GE-LOGIQ-7"),
        ("GE Logiq 5 @10-12MHz", "GE-LOGIQ-5"),
        ("Toshiba Aplio 300 @12-14 MHz", "TOSHIBA-Aplio-300"),
        ("U-Systems @10-14MHz", "U-Systems"),
        ("ge-logiq-e9", "GE-LOGIQ-E9"),
        ("Samsung-Heraw10", "Samsung-Heraw10"),
    ],
)
def test_lookup_aliases(raw, canonical):
    assert default_vocabulary().lookup(raw) == canonical


@pytest.mark.parametrize(
    "manufacturer, model, canonical",
    [
        ("GE Healthcare", "LOGIQ E9", "GE-LOGIQ-E9"),
        ("GE Medical Systems", "LOGIQ 700", "GE-LOGIQ-700"),
        ("SIEMENS", "ACUSON S2000", "Siemens-ACUSON-S2000"),
        ("Philips Medical Systems", "EPIQ 7", "Philips-EPIQ7"),
        ("TOSHIBA_MEC_US", "Aplio i700", "TOSHIBA-Aplio-i700"),
        ("PhantomMed", "C5", "PhantomMed-C5"),
    ],
)
def test_lookup_dicom(manufacturer, model, canonical):
    assert default_vocabulary().lookup_dicom(manufacturer, model) == canonical


def test_unknown_device_is_reported_with_fix():
    vocab = default_vocabulary()
    with pytest.raises(UnknownDeviceError, match="Hitachi Arietta.*device vocabulary file"):
        vocab.lookup("Hitachi Arietta 850", context="row 3")
    assert vocab.find_dicom("Hitachi", "Arietta 850") is None


def test_user_file_adds_devices_after_builtins(tmp_path):
    f = tmp_path / "devices.json"
    f.write_text(json.dumps({"devices": [{"name": "Hitachi-ARIETTA-850", "manufacturer": "Hitachi",
                                          "model": "ARIETTA 850", "aliases": ["Arietta850"]}]}))
    base = default_vocabulary()
    vocab = DeviceVocabulary.from_file(f)
    assert vocab.id_of("Hitachi-ARIETTA-850") == base.num_embeddings
    assert vocab.lookup_dicom("Hitachi Medical", "ARIETTA 850") == "Hitachi-ARIETTA-850"
    # built-in ids unchanged
    assert all(vocab.id_of(n) == base.id_of(n) for n in base.names)
    # round trip through the serialised form kept with trained bundles
    again = DeviceVocabulary.from_dict(vocab.to_dict())
    assert again.names == vocab.names and again.id_of("Hitachi-ARIETTA-850") == vocab.id_of("Hitachi-ARIETTA-850")


def test_user_file_errors_name_the_file_and_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("devices:\n  - name: X\n    modle: typo\n")
    with pytest.raises(ValueError, match=r"bad.yaml: devices\[0\] has unknown keys \['modle'\]"):
        DeviceVocabulary.from_file(f)
    f.write_text("devices:\n  - name: GE-LOGIQ-E9\n")
    with pytest.raises(ValueError, match="declared twice"):
        DeviceVocabulary.from_file(f)


def test_normalize():
    assert normalize_device_name("GE Logiq 7 @10-14MHz") == normalize_device_name("GE-LOGIQ-7") == "gelogiq7"
