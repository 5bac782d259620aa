"""Slicer-side helpers of the KA2ERSegment module: scene geometry to RAS prompts, changed-region writes
into segments, the worker thread that owns torch, and the dependency check."""
