"""Data: the datalist contract and everything that reads real data into it (public API for plugins).

One concept per module; nothing is imported here, so ``import busgen_monai.data.schema`` loads only what it needs.

- :mod:`.schema` - the datalist (JSON) schema: build, validate, load and save datalists.
- :mod:`.conditions` - the condition codec (names <-> ids) and the packed condition tensor the network reads.
- :mod:`.devices` - the device vocabulary (canonical scanner names, DICOM aliases).
- :mod:`.loaders` - public data sets (BUS-BRA, BUSI, folders) to datalists; patient-wise splits.
- :mod:`.io`, :mod:`.transforms`, :mod:`.dataset` - image reading, MONAI transforms, datasets and samplers.
- :mod:`.dicom` (package: header, phi, metadata, region, reader) - what an ultrasound DICOM file says and its frames;
  :mod:`.dicom_transforms` - a MONAI ``ImageReader`` on top of it.
- :mod:`.ingest` (package: settings, records, classify, decode, write, pool, state, sources, labels, assemble, run,
  cli) - PACS export to frames + datalist (``busgen ingest``).
- ``dicom_fuzz`` moved to :mod:`busgen_monai.synthetic.dicom_fuzz` (re-exported here for one release).

Moved, re-exported from their old paths for one release: the phantom and the fake PACS export
(:mod:`busgen_monai.synthetic`; ``data.phantom``, ``data.pacs_export``), the phantom's shape measurements
(:mod:`busgen_monai.evaluation.lesion_shape`), ``data.dicom_phi`` (:mod:`.dicom.phi`).
"""
