"""Data: ingest, decoding, preprocessing, augmentation, the tf.data batches, the audit and its census.
Imports shared only."""
