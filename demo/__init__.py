"""Demos that run the real engines on loopback (`make demo-kubernetes`)."""
