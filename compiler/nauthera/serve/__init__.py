"""Serving OPA fleets: the bundle server (long polling, status, decision logs) and the sidecar."""
