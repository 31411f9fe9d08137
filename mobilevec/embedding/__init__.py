"""Vectors out: parallel decode and batched inference, the resumable store, search."""
