"""Evaluation: DESIGN.md's interaction protocol, run against any session."""
