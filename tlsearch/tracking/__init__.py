"""Trackers that mirror the results on disk elsewhere: Weights & Biases."""
