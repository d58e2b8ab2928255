"""Model: the network, the training recipe and its callbacks, the one inference path, calibration,
novelty, confident learning. Imports shared only."""
