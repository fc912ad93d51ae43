"""The benchmark harness, kept apart from the detector: dataset loaders (`datasets`),
functional metrics (`metrics`), the paper's evaluation protocol (`evaluate`) and threshold
calibration (`calibration`)."""
