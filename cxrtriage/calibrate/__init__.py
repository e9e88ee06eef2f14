"""Site calibration: a hospital's own labelled sample refits a model's operating point(s) and a
temperature for its probabilities, and writes a new sidecar beside the same ONNX graph."""

from cxrtriage.calibrate.run import CalibrationError, calibrate
from cxrtriage.calibrate.sample import MIN_PER_CLASS, read_sample

__all__ = ["CalibrationError", "MIN_PER_CLASS", "calibrate", "read_sample"]
