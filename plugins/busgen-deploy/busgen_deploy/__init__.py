"""busgen-deploy: a MONAI Deploy App SDK application for breast-ultrasound DICOM (DICOM in, SR + SC out),
PACS access over DICOMweb (QIDO/WADO/STOW) and PACS ingestion into a datalist."""

__version__ = "0.1.0"
