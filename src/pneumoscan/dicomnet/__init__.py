"""DICOM networking: the C-STORE/C-ECHO receiver, and structured reports of study results sent back by C-STORE."""
