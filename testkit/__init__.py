"""Helpers for the test suite and the bench scripts: DICOM test objects, out-of-distribution
samples, heatmap checks and a throw-away local Orthanc. Not part of the installed package."""
