"""Hostile tests: what a malicious device, a tampered checkpoint or a malformed file can and cannot do."""
