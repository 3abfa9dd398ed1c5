"""KTC2023 water-tank data: reading, calibration, segmentation and the challenge score."""
