"""Data: files to arrays: ingest, decoding, preprocessing, the audit and its census, corrections, the
inputs of predict, MNIST, synthetic strokes. Imports shared only."""
