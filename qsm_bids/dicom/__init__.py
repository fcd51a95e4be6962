"""DICOM export of quantitative maps (PACS-viewable series)."""
