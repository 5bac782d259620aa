"""Slicer-side helpers of the KA2ERSegment module: scene geometry to RAS prompts, changed-region writes
into segments, the worker thread that owns torch, the dependency check; and, free of Slicer, the
choices as named values, error messages, and keeping the session's target in step with its segment."""
