"""Quantization support: calibration data, observers and calibrators (the passes live in ``lowbit.passes``)."""
