"""Keeping the engine session's target in step with its segment in the scene.

The session keeps its own copy of each target's mask: its undo history and the previous-mask prompt
of the next click come from it. The module writes each change it makes into the segment, so the two
stay equal; anything else that changes the segmentation (the Segment Editor, another module, an undo
there) leaves the session behind, and before the next prompt it starts again from what the segment
holds. Nothing here needs Slicer.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np


class TargetSync:
    """Which segment the session mirrors; the module's own writes keep it, any other change to the
    segmentation ends it.

    Call :meth:`segmentation_changed` on every content change of the target's segmentation and
    make the module's writes inside :meth:`own_write`.
    """

    def __init__(self):
        self.mirrored: Optional[str] = None
        """The segment whose content the session's target holds (None: none is known to)."""
        self.others = False
        """Whether the session also holds the other segments' content as they are."""
        self._own_writes = 0

    def in_step(self, segment_id: str, others: bool = False) -> bool:
        """Whether the session holds ``segment_id`` as it is, and with ``others`` the other
        segments too."""
        return self.mirrored is not None and self.mirrored == segment_id and (self.others or not others)

    def mirror(self, segment_id: str, others: bool = False) -> None:
        """The session is being given ``segment_id``'s content as it is now (and the other
        segments' with ``others``)."""
        self.mirrored, self.others = segment_id, others

    def forget(self) -> None:
        """The session may differ from every segment (a new session or image, a failed write)."""
        self.mirrored, self.others = None, False

    @contextmanager
    def own_write(self) -> Iterator[None]:
        """Changes to the segmentation inside this block are the module's: they keep the mirror."""
        self._own_writes += 1
        try:
            yield
        finally:
            self._own_writes -= 1

    def segmentation_changed(self) -> None:
        """Some segment's content changed; unless the module wrote it, the target is read again
        before the next prompt (another segment's edit may have overwritten it)."""
        if not self._own_writes:
            self.forget()


def seed_target(session, segment_id: str, content: np.ndarray) -> bool:
    """Make ``segment_id`` the session's target, started from ``content`` (the segment as the scene
    holds it, (k, j, i)) unless the session's mask already equals it, which keeps its undo history.
    Returns whether the session was seeded."""
    session.set_target(segment_id)
    if np.array_equal(session.mask, content):
        return False
    session.set_mask(content)
    return True


def seed_targets(session, segment_id: str, content: Optional[np.ndarray],
                 others: dict[str, np.ndarray], overlap: bool) -> None:
    """Bring the session in step with the scene before a prompt: its overlap choice, the other
    segments ``others`` (id -> content; read when segments may not overlap, so that their voxels
    are background to the target; the session forgets targets whose segment is gone), then the
    target ``segment_id`` (``content`` None: the session already mirrors it)."""
    if session.overlap != overlap:
        session.overlap = overlap
    if not overlap and content is not None:
        for gone in [name for name in session.targets if name != segment_id and name not in others]:
            session.set_target(gone)
            session.reset()
    for other, mask in others.items():
        seed_target(session, other, mask)
    if content is None:
        session.set_target(segment_id)
    else:
        seed_target(session, segment_id, content)
