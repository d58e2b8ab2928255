"""Model: the network, the training recipe, the one inference path, calibration, novelty, confident learning. Imports shared only."""
