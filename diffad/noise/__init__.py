"""Simplex noise in torch (batched, seeded, on any device)."""
