"""Simulated adapters for every channel (being written)."""
