"""Residuals to anomaly maps to image scores."""
