"""Continual adaptation: stage schedules, cross-stage evaluation, methods against forgetting."""
