"""Model: the network and what is fitted or computed on arrays: the recipe, the tf.data pipeline and its
augmentation, fitting, the one inference path and the one prediction row, calibration, novelty,
confident learning, saliency, the export formats. Imports shared only."""
