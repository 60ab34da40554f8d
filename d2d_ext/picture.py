"""The picture inside a frame: rows and columns of padding at its edges.

A sensor's picture letterboxed or pillarboxed into a video frame, or a dataset's images padded to
one size, carries lines of one value around the scene. They are not the scene: a bright region
that the picture's edge cuts would end in a dark (or flat) band there, and be taken whole as a
target's once a window grew into it. The annotator reads each image without them
(:func:`picture_box`) and pastes the masks back into the frame.

A frame written as JPEG is coded in 8x8 blocks from its top-left corner, so where the padding's
width is no multiple of 8 its last lines share blocks with the picture and carry the coding's
ringing: no longer flat, yet still padding.
"""

from __future__ import annotations

import numpy as np

from .points import point_pixels

__all__ = ["picture_box", "CODING_BLOCK", "CODED_TOLERANCE"]

#: JPEG codes an image in blocks of this many pixels a side, laid from its top-left corner: the
#: padding's lines that share a block with the picture are no longer flat once coded
CODING_BLOCK = 8
#: a coded padding line's median lies within this share of the local range (the two blocks' lines
#: beyond it) of the padding's value: the coding's ringing about the value, small beside the picture
CODED_TOLERANCE = 0.125


def picture_box(image: np.ndarray, points: np.ndarray) -> tuple:
    """``(y0, y1, x0, x1)``: ``image`` ``(H, W)`` without the rows and columns at its edges whose
    pixels are all one value (a letterbox or pillarbox: a sensor's picture padded to a video
    frame, or a dataset's images padded to one size), where every point ``(K, 2)`` (x, y) lies in
    what is left; the whole image where none does or nothing is left. Where the flat lines end on
    a boundary of JPEG's coding blocks, the picture may begin anywhere in the next block (the
    padding's lines there carry the coding's ringing): the lines of that block still at about the
    padding's value are left out too (:func:`_coded_edge`), never within a block of a point. A
    picture line at about that value there reads as padding as well: nothing tells them apart."""
    H, W = image.shape
    y0, y1, x0, x1 = 0, H, 0, W
    box = None
    while box != (y0, y1, x0, x1):  # again until no side moves: a flat row may end in a flat column
        box = (y0, y1, x0, x1)
        sub = image[y0:y1, x0:x1]
        top = _flat_run(sub)
        if top == len(sub):
            return 0, H, 0, W
        y0, y1 = y0 + top, y1 - _flat_run(sub[::-1])
        sub = image[y0:y1, x0:x1].T
        left = _flat_run(sub)
        if left == len(sub):
            return 0, H, 0, W
        x0, x1 = x0 + left, x1 - _flat_run(sub[::-1])
    rows, cols = point_pixels(points)
    if len(points) and not ((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)).all():
        return 0, H, 0, W
    first = (int(rows.min()), int(cols.min())) if len(points) else (H, W)
    last = (int(rows.max()), int(cols.max())) if len(points) else (-1, -1)
    y0, y1 = _coded_edge(image[:, x0:x1], y0, y1, H, first[0], last[0])
    x0, x1 = _coded_edge(image[y0:y1].T, x0, x1, W, first[1], last[1])
    return y0, y1, x0, x1


def _coded_edge(lines: np.ndarray, start: int, stop: int, size: int, first: int, last: int) -> tuple:
    """``(start, stop)`` moved, on a side whose flat lines end on a coding block's boundary, past
    the lines of that block that are still the padding (:func:`_padding_run`). ``lines``: ``size``
    rows; the lines within :data:`CODING_BLOCK` of a point's (``first``, ``last``: the points'
    smallest and largest line) stay inside: a target there keeps the pixels around it."""
    if 0 < start < stop and start % CODING_BLOCK == 0:
        end = min(start + CODING_BLOCK - 1, stop - 1, first - CODING_BLOCK)  # lines start..end-1 may go
        start += _padding_run(lines[start:], lines[start - 1, 0], lines[start:start + 2 * CODING_BLOCK], end - start)
    if start < stop < size and stop % CODING_BLOCK == 0:
        begin = max(stop - CODING_BLOCK + 1, start + 1, last + 1 + CODING_BLOCK)  # lines begin..stop-1 may go
        stop -= _padding_run(lines[stop - 1::-1], lines[stop, 0], lines[max(start, stop - 2 * CODING_BLOCK):stop],
                             stop - begin)
    return start, stop


def _padding_run(lines: np.ndarray, pad: float, near: np.ndarray, most: int) -> int:
    """How many of ``lines``, from the first and at most ``most``, are still the padding of value
    ``pad``: their median lies within :data:`CODED_TOLERANCE` of ``near``'s range (the two blocks'
    lines beyond the flat ones) of it, as a coded padding line's ringing about its value does."""
    tol = CODED_TOLERANCE * float(near.max() - near.min())
    n = 0
    while n < most and abs(float(np.median(lines[n])) - pad) <= tol:
        n += 1
    return n


def _flat_run(lines: np.ndarray) -> int:
    """How many of ``lines`` (the rows of a 2-D view), from the first, hold one value each (all of
    them where every one does). Read in blocks of doubling size: an edge that is no padding costs
    one line, and padding about twice its own pixels, not the frame's."""
    n, size = 0, 1
    while n < len(lines):
        block = lines[n:n + size]
        flat = (block == block[:, :1]).all(1)
        if not flat.all():
            return n + int(np.argmin(flat))
        n += len(block)
        size *= 2
    return n
