"""Tests for busgen_monai.data.conditions (condition encoding): packed layout, null values, dropout, codec
vocabularies, box masks; and the re-export from busgen_monai.networks kept for one release."""

from __future__ import annotations

import pytest
import torch

from busgen_monai.data.devices import default_vocabulary
from busgen_monai.data.conditions import (
    CONDITION_KEYS,
    ConditionCodec,
    condition_width,
    drop_conditions,
    null_conditions,
    pack_conditions,
    render_box_mask,
    unpack_conditions,
)


def test_pack_unpack_roundtrip_and_layout():
    boxes = [[[0.1, 0.2, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8]], []]
    packed = pack_conditions([1, 2], [3, 0], [5, 0], boxes, max_boxes=3)
    assert packed.shape == (2, 1, condition_width(3)) == (2, 1, 15)
    parts = unpack_conditions(packed)
    assert parts.pathology.tolist() == [1, 2]
    assert parts.device.tolist() == [3, 0]
    assert parts.birads.tolist() == [5, 0]
    assert parts.box_valid.tolist() == [[True, True, False], [False, False, False]]
    assert torch.allclose(parts.boxes[0, :2], torch.tensor(boxes[0]))
    # (B, K) is accepted too; a wrong width names the layout
    assert unpack_conditions(packed[:, 0]).pathology.tolist() == [1, 2]
    with pytest.raises(ValueError, match="3 \\+ 4 \\* max_boxes"):
        unpack_conditions(torch.zeros(2, 1, 6))


def test_all_minus_one_is_fully_unconditional():
    """MONAI's DiffusionInferer.sample(cfg=..., cfg_fill_value=-1) builds exactly this."""
    parts = unpack_conditions(torch.full((3, 1, condition_width(2)), -1.0))
    assert parts.pathology.tolist() == parts.device.tolist() == parts.birads.tolist() == [0, 0, 0]
    assert not parts.box_valid.any()
    assert torch.equal(null_conditions(3, 2), torch.full((3, 1, condition_width(2)), -1.0))


def test_pack_keeps_largest_boxes_when_too_many(caplog):
    boxes = [[[0.0, 0.0, 0.1, 0.1], [0.0, 0.0, 0.9, 0.9], [0.2, 0.2, 0.5, 0.5]]]
    parts = unpack_conditions(pack_conditions(boxes=boxes, max_boxes=2))
    kept = parts.boxes[0][parts.box_valid[0]].tolist()
    assert len(kept) == 2 and [0.0, 0.0, 0.1, 0.1] not in [[round(v, 4) for v in b] for b in kept]
    assert "keeps the 2 largest" in caplog.text


def test_drop_conditions_sets_each_null_separately():
    packed = pack_conditions([1, 2], [4, 5], [3, 3], [[[0.1, 0.1, 0.3, 0.3]]] * 2, max_boxes=2)
    mask = torch.tensor([True, False])
    for key in CONDITION_KEYS:
        parts = unpack_conditions(drop_conditions(packed, {key: mask}))
        ref = unpack_conditions(packed)
        for other in ("pathology", "device", "birads"):
            got, want = getattr(parts, other), getattr(ref, other)
            if other == key:
                assert got.tolist() == [0, want[1].item()]
            else:
                assert torch.equal(got, want)
        if key == "boxes":
            assert parts.box_valid[:, 0].tolist() == [False, True]
        else:
            assert torch.equal(parts.box_valid, ref.box_valid)
    assert torch.equal(packed, pack_conditions([1, 2], [4, 5], [3, 3], [[[0.1, 0.1, 0.3, 0.3]]] * 2, max_boxes=2))
    with pytest.raises(KeyError, match="unknown condition"):
        drop_conditions(packed, {"colour": mask})


def test_codec_ids_follow_the_contract():
    codec = ConditionCodec(["benign", "malignant"])
    vocab = default_vocabulary()
    assert codec.pathology_id("benign") == 1 and codec.pathology_id("malignant") == 2
    assert codec.pathology_id(None) == 0
    assert codec.device_id("GE-LOGIQ-E9") == vocab.id_of("GE-LOGIQ-E9") == 2
    assert codec.device_id("GE Logiq 7 @10-14MHz") == vocab.id_of("GE-LOGIQ-7")  # aliases resolve
    assert codec.device_id("unknown") == 0
    assert codec.birads_id("4A") == codec.birads_id("4a") > 0 and codec.birads_id(None) == 0
    with pytest.raises(KeyError, match="dcis.*pathology list"):
        codec.pathology_id("dcis")
    with pytest.raises(KeyError, match="BI-RADS"):
        codec.birads_id("7")
    item = {"pathology": "malignant", "device": "PhantomMed-C5", "birads": "5", "boxes": [[0.2, 0.3, 0.5, 0.6]]}
    parts = unpack_conditions(torch.from_numpy(codec.encode_item(item))[None])
    assert (parts.pathology.item(), parts.device.item()) == (2, vocab.id_of("PhantomMed-C5"))
    assert parts.birads.item() == codec.birads_id("5")
    assert parts.box_valid[0].sum() == 1
    assert unpack_conditions(torch.from_numpy(codec.encode_item(item, use_birads=False))[None]).birads.item() == 0
    assert codec.network_kwargs() == {
        "num_pathology_embeds": 3,
        "num_device_embeds": vocab.num_embeddings,
        "num_birads_embeds": 11,
    }


def test_codec_from_datalist_adds_unknown_devices_and_saves(tmp_path):
    datalist = {"schema_version": 1, "pathologies": ["benign", "malignant", "dcis"],
                "devices": ["GE-LOGIQ-E9", "Acme-Scan-3000"], "training": []}
    codec = ConditionCodec.from_datalist(datalist, min_device_embeds=64)
    assert codec.pathologies == ["benign", "malignant", "dcis"] and codec.num_pathology_embeds == 4
    new_id = codec.device_id("Acme-Scan-3000")
    assert new_id == default_vocabulary().num_embeddings  # appended after the built-in devices
    assert codec.num_device_embeds == 64
    path = codec.save(tmp_path / "conditioning.json")
    back = ConditionCodec.load(path)
    assert back.to_dict() == codec.to_dict()
    assert back.device_id("Acme-Scan-3000") == new_id
    other = ConditionCodec(["x"])
    other.load_state_dict(codec.state_dict())
    assert other.pathologies == codec.pathologies


def test_render_box_mask_covers_touched_pixels_and_is_flip_symmetric():
    boxes = torch.tensor([[[0.25, 0.5, 0.5, 0.75], [0.0, 0.0, 0.1, 0.1]]])
    mask = render_box_mask(boxes, torch.tensor([[True, False]]), (8, 8))
    assert mask.shape == (1, 1, 8, 8)
    expected = torch.zeros(8, 8)
    expected[4:6, 2:4] = 1
    assert torch.equal(mask[0, 0], expected)
    # a box edge inside a pixel covers that pixel; flipping the box flips the mask exactly
    box = torch.tensor([[[0.13, 0.27, 0.61, 0.88]]])
    flipped = torch.tensor([[[1 - 0.61, 0.27, 1 - 0.13, 0.88]]])
    m1 = render_box_mask(box, None, (13, 17))
    m2 = render_box_mask(flipped, None, (13, 17))
    assert torch.equal(m1.flip(-1), m2)
    assert render_box_mask(torch.zeros(2, 0, 4), None, (4, 4)).sum() == 0


def test_networks_still_re_exports_the_codec_for_one_release():
    import busgen_monai.data.conditions as contract
    import busgen_monai.networks as networks
    import busgen_monai.networks.conditions as old

    for name in contract.__all__:  # the same objects, so checkpoints and configs naming the old path still work
        assert getattr(old, name) is getattr(contract, name), name
    assert networks.ConditionCodec is contract.ConditionCodec
    assert networks.pack_conditions is contract.pack_conditions
    codec = networks.ConditionCodec(["benign", "malignant"])
    assert contract.ConditionCodec.from_dict(codec.to_dict()).pathologies == codec.pathologies
