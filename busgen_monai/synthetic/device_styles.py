"""Acquisition styles of the phantom's four fictional ultrasound systems (:class:`DeviceStyle`,
:data:`PHANTOM_DEVICES`): probe geometry, gain, TGC, dynamic range, speckle grain, resolution, tint and the DICOM
identity each one writes. Part of :mod:`busgen_monai.synthetic.phantom`.
"""

from __future__ import annotations

from dataclasses import dataclass


__all__ = ["DeviceStyle", "PHANTOM_DEVICES", "get_device_style"]


@dataclass(frozen=True)
class DeviceStyle:
    """Acquisition style of one (fictional) ultrasound system.

    Attributes:
        name: canonical device name (the datalist ``device`` value), e.g. ``"PhantomMed-L7"``.
        manufacturer: DICOM Manufacturer (0008,0070).
        model: DICOM ManufacturerModelName (0008,1090).
        geometry: ``"linear"`` (rectangular image) or ``"sector"`` (curvilinear fan, black outside).
        gain_db: overall receive gain added before log compression (brighter when larger).
        tgc_db: time-gain compensation, dB added linearly from the top to the bottom of the image.
        attenuation_db: tissue attenuation, dB lost linearly from top to bottom (TGC fights it).
        dynamic_range_db: log-compression window; wide = grey, low contrast; narrow = contrasty.
        speckle_grain: Gaussian PSF sigma (axial, lateral) in beam-space pixels = speckle grain size.
        resolution_sigma: extra Gaussian blur (pixels) of the envelope (lower resolution when larger).
        tint: ``None`` for greyscale, else the RGB colour (0-255) mid-grey is mapped to (colour map).
        fan_half_angle_deg: half opening angle of the fan (sector geometry only; may be narrowed to
            fit the image width).
        frequency_mhz: nominal centre frequency (used for DICOM TransducerData only).
        depth_cm: imaging depth shown by the image height (sets the pixel spacing).
        frame_rate: cine frame rate in frames per second.
        transducer_type: DICOM TransducerType (``LINEAR`` / ``CURVED LINEAR``).
    """

    name: str
    manufacturer: str
    model: str
    geometry: str
    gain_db: float
    tgc_db: float
    attenuation_db: float
    dynamic_range_db: float
    speckle_grain: tuple[float, float]
    resolution_sigma: float
    tint: tuple[int, int, int] | None = None
    fan_half_angle_deg: float = 0.0
    frequency_mhz: float = 7.5
    depth_cm: float = 4.0
    frame_rate: float = 30.0
    transducer_type: str = "LINEAR"

    @property
    def is_color(self) -> bool:
        """True when images are RGB (tinted colour map)."""
        return self.tint is not None


PHANTOM_DEVICES: dict[str, DeviceStyle] = {
    s.name: s
    for s in (
        DeviceStyle(
            name="PhantomMed-L7", manufacturer="PhantomMed", model="L7", geometry="linear",
            gain_db=0.0, tgc_db=12.0, attenuation_db=14.0, dynamic_range_db=48.0,
            speckle_grain=(1.1, 1.8), resolution_sigma=0.5, tint=None,
            frequency_mhz=7.5, depth_cm=4.0, frame_rate=30.0, transducer_type="LINEAR",
        ),
        DeviceStyle(
            name="PhantomMed-L12", manufacturer="PhantomMed", model="L12", geometry="linear",
            gain_db=6.0, tgc_db=16.0, attenuation_db=18.0, dynamic_range_db=45.0,
            speckle_grain=(0.75, 1.05), resolution_sigma=0.0, tint=None,
            frequency_mhz=12.0, depth_cm=3.0, frame_rate=40.0, transducer_type="LINEAR",
        ),
        DeviceStyle(
            name="PhantomMed-C5", manufacturer="PhantomMed", model="C5", geometry="sector",
            gain_db=-3.0, tgc_db=22.0, attenuation_db=12.0, dynamic_range_db=54.0,
            speckle_grain=(1.6, 2.6), resolution_sigma=0.6, tint=None, fan_half_angle_deg=38.0,
            frequency_mhz=4.0, depth_cm=7.0, frame_rate=20.0, transducer_type="CURVED LINEAR",
        ),
        DeviceStyle(
            name="PhantomMed-T9", manufacturer="PhantomMed", model="T9", geometry="linear",
            gain_db=0.0, tgc_db=13.0, attenuation_db=14.0, dynamic_range_db=66.0,
            speckle_grain=(1.1, 1.5), resolution_sigma=0.5, tint=(176, 138, 96),
            frequency_mhz=9.0, depth_cm=4.0, frame_rate=25.0, transducer_type="LINEAR",
        ),
    )
}
"""The four canonical phantom devices, keyed by canonical name."""


def get_device_style(device: str | DeviceStyle) -> DeviceStyle:
    """Return the :class:`DeviceStyle` for a canonical name (or pass a style through).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if isinstance(device, DeviceStyle):
        return device
    try:
        return PHANTOM_DEVICES[device]
    except KeyError:
        raise ValueError(
            f"unknown phantom device {device!r}; use one of {sorted(PHANTOM_DEVICES)}"
        ) from None
