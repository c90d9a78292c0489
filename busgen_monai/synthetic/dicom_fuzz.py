"""Seeded mutants of real DICOM files, for fuzzing the ingester (tests and ``benchmarks/bench_fuzz.py``).

:func:`reidentify` writes a copy of a real file with distinctive identifier values (names, ids, accession
number, institution, physicians, dates, UIDs), so that any of them found in an output is a leak and not a
coincidence. :func:`mutants` derives reproducible mutants from such files: header byte flips, element
length fields made too large or too small (the corruption that hides later elements from a strict
parse), VR damage, inserted or deleted header bytes, pixel-data flips, truncation, and mixes of these.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = ["MUTATIONS", "reidentify", "element_offsets", "mutate", "mutants", "write_mutants", "audit_outputs"]

MUTATIONS = ("header_flips", "length_too_large", "length_too_small", "vr_damage", "insert_delete", "pixel_flips",
             "truncate", "mixed")


def reidentify(src: str | Path, dst: str | Path, index: int) -> list[str]:
    """Copy ``src`` to ``dst`` with identifying elements set to distinctive values; returns those values
    (whole values and the parts of names, as a scrubber must find them)."""
    import warnings

    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(src)
        uid_root = "1.2.826.0.1.3680043.8.498.7"
        values = {
            "PatientName": f"ZQXFAMILY{index}^ZQXGIVEN{index}",
            "PatientID": f"ZQXPID{index:04d}77",
            "AccessionNumber": f"ZQXACC{index:04d}",
            "InstitutionName": f"ZQXINSTITUTE HOSPITAL {index}",
            "ReferringPhysicianName": f"ZQXREFDOC{index}^ZQXANNA",
            "OperatorsName": f"ZQXOPERATOR{index}",
            "PatientBirthDate": f"1931{index % 12 + 1:02d}17",
            "StudyDate": f"2019{index % 12 + 1:02d}23",
            "StudyID": f"ZQXSTUDY{index}",
            "StudyInstanceUID": f"{uid_root}.{index}.1.99173",
            "SeriesInstanceUID": f"{uid_root}.{index}.2.99173",
            "SOPInstanceUID": f"{uid_root}.{index}.3.99173",
        }
        for kw, value in values.items():
            setattr(ds, kw, value)
        if "file_meta" in ds.__dict__ or getattr(ds, "file_meta", None) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = values["SOPInstanceUID"]
        ds.save_as(dst)
    out = set(values.values())
    for kw in ("PatientName", "ReferringPhysicianName"):
        out.update(p for p in values[kw].split("^") if p)
    return sorted(out, key=len, reverse=True)


def element_offsets(data: bytes, limit: int = 1 << 16) -> list[tuple[int, int, int, str]]:
    """``(tag offset, length offset, length size, byte order)`` of the data elements of a header, found by walking it
    (explicit VR little/big endian and implicit VR little endian; the walk stops at pixel data)."""
    out = []
    pos = 132 if data[128:132] == b"DICM" else 0
    end = min(len(data), limit)
    order = "<"
    while pos + 8 <= end:
        group, elem = struct.unpack(f"{order}HH", data[pos:pos + 4])
        if group == 0x7FE0:
            break
        vr = data[pos + 4:pos + 6]
        if vr.isalpha() and vr.isupper():
            if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"):
                (length,) = struct.unpack(f"{order}L", data[pos + 8:pos + 12])
                out.append((pos, pos + 8, 4, order))
                step = 12
            else:
                (length,) = struct.unpack(f"{order}H", data[pos + 6:pos + 8])
                out.append((pos, pos + 6, 2, order))
                step = 8
        else:
            (length,) = struct.unpack(f"{order}L", data[pos + 4:pos + 8])
            out.append((pos, pos + 4, 4, order))
            step = 8
        if length == 0xFFFFFFFF:  # undefined-length sequence: step inside it
            pos += step
            continue
        pos += step + length
        if group == 0x0002 and pos + 4 <= end:
            # after the file meta group the data set may be big endian
            nxt = struct.unpack("<H", data[pos:pos + 2])[0]
            if nxt != 0x0002 and nxt > 0x00FF and struct.unpack(">H", data[pos:pos + 2])[0] <= 0x00FF:
                order = ">"
    return out


def mutate(data: bytes, rng: np.random.Generator, kind: str) -> bytes:
    """One mutant of ``data`` (a DICOM file's bytes) of the given ``kind`` (one of :data:`MUTATIONS`)."""
    buf = bytearray(data)
    n = len(buf)
    header = min(n, 4096)
    if kind == "mixed":
        for sub in rng.choice(MUTATIONS[:-1], size=int(rng.integers(2, 4)), replace=False):
            buf = bytearray(mutate(bytes(buf), rng, str(sub)))
        return bytes(buf)
    if kind == "header_flips":
        for _ in range(int(rng.integers(1, 9))):
            buf[int(rng.integers(0, header))] = int(rng.integers(0, 256))
    elif kind in ("length_too_large", "length_too_small"):
        elems = element_offsets(bytes(buf))
        if not elems:
            return mutate(data, rng, "header_flips")
        for _ in range(int(rng.integers(1, 3))):
            _, at, size, order = elems[int(rng.integers(0, len(elems)))]
            fmt = order + ("H" if size == 2 else "L")
            (old,) = struct.unpack(fmt, bytes(buf[at:at + size]))
            if kind == "length_too_large":
                new = old + int(rng.choice([2, 4, 8, 16, 64, 256, 4096])) if rng.random() < 0.7 else \
                    int(rng.integers(old + 1, max(old + 2, (1 << (8 * size)) - 1)))
            else:
                new = max(0, old - int(rng.integers(1, max(2, old + 1))))
            new = min(new, (1 << (8 * size)) - 2)
            buf[at:at + size] = struct.pack(fmt, new)
            if rng.random() < 0.3:  # the same element read big endian
                buf[at:at + size] = bytes(reversed(buf[at:at + size]))
    elif kind == "vr_damage":
        elems = element_offsets(bytes(buf))
        for _ in range(int(rng.integers(1, 4))):
            if not elems:
                break
            tag_at = elems[int(rng.integers(0, len(elems)))][0]
            options = (b"UN", b"OB", b"SQ", b"XX", b"\x00\x00", b"UT", b"PN")
            buf[tag_at + 4:tag_at + 6] = options[int(rng.integers(0, len(options)))]
    elif kind == "insert_delete":
        at = int(rng.integers(132 if n > 132 else 0, max(header, 133)))
        if rng.random() < 0.5:
            buf[at:at] = bytes(rng.integers(0, 256, size=int(rng.integers(1, 9)), dtype=np.uint8))
        else:
            del buf[at:at + int(rng.integers(1, 9))]
    elif kind == "pixel_flips":
        for _ in range(int(rng.integers(1, 33))):
            buf[int(rng.integers(header, max(header + 1, n)) % n)] = int(rng.integers(0, 256))
    elif kind == "truncate":
        buf = buf[: max(1, int(n * rng.uniform(0.05, 0.999)))]
    else:
        raise ValueError(f"unknown mutation {kind!r}; choose from {MUTATIONS}")
    return bytes(buf)


def mutants(bases: Sequence[bytes], count: int, seed: int = 0) -> Iterator[tuple[int, str, bytes]]:
    """``count`` reproducible mutants ``(base index, mutation kind, bytes)``, kinds and bases in turn."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        b = i % len(bases)
        kind = MUTATIONS[(i // len(bases)) % len(MUTATIONS)]
        yield b, kind, mutate(bases[b], rng, kind)


def write_mutants(bases: Sequence[bytes], folder: str | Path, count: int, seed: int = 0) -> dict[str, str]:
    """Write ``count`` mutants into ``folder`` (``M00000`` ...); returns file name -> mutation kind."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {}
    for i, (b, kind, data) in enumerate(mutants(bases, count, seed)):
        # a distinct SOP Instance UID per mutant (same length), so that mutants of one base are not
        # de-duplicated away before they are decoded
        data = data.replace(b".3.99173", f".3.{i % 100000:05d}".encode())
        name = f"M{i:05d}"
        (folder / name).write_bytes(data)
        kinds[name] = f"{b}:{kind}"
    return kinds


def audit_outputs(out: str | Path, identifiers: Sequence[str], extra_text: str = "",
                  skip_suffixes: Sequence[str] = (".png", ".gz")) -> list[tuple[str, str]]:
    """``(file, value)`` for every identifier value found (case-insensitive) in any byte of any output file
    under ``out`` (reports, datalist, rejects, manifest, state; frame images excepted: their pixels are
    not text) or in ``extra_text`` (captured stdout/stderr/logs)."""
    hits = []
    needles = [(v, v.lower().encode("latin-1")) for v in identifiers if v]
    for f in sorted(Path(out).rglob("*")):
        if not f.is_file() or f.name.endswith(tuple(skip_suffixes)):
            continue
        data = f.read_bytes().lower()
        hits += [(str(f.relative_to(out)), v) for v, n in needles if n in data]
    low = extra_text.lower()
    hits += [("<output text>", v) for v, _ in needles if v.lower() in low]
    return hits
