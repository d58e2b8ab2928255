"""Data: ingest, decoding, preprocessing, augmentation, the audit and its census. Imports shared only."""
