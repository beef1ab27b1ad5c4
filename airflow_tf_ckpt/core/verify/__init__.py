"""Verification of a step without TensorFlow: completeness, index parse and every CRC32C."""
