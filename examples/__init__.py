"""Runnable jobgate examples (``examples.pricing`` is a worker)."""
