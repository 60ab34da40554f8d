"""``picture_box``: the picture inside a frame padded by lines of one value, JPEG-coded or not."""

import numpy as np
import pytest

from conftest import jpeg_coded
from d2d_ext.picture import picture_box


def test_picture_box_leaves_out_the_flat_rows_and_columns_at_the_edges():
    """A letterbox (flat rows), a pillarbox (flat columns), and a flat row of the picture itself
    inside the padding (found once the columns beside it are gone) are outside the picture; a
    frame with a point in its padding, or with nothing else, is read whole."""
    rng = np.random.default_rng(0)
    picture = rng.random((40, 50)).astype(np.float32)
    picture[0] = 1.0  # the picture's own first row, saturated
    frame = np.pad(picture, ((3, 2), (4, 6)))
    inside = np.array([[10.0, 20.0]])
    assert picture_box(frame, inside) == (4, 43, 4, 54)
    assert picture_box(picture, inside - 4) == (1, 40, 0, 50)
    assert picture_box(frame, np.array([[1.0, 20.0]])) == (0, 45, 0, 60)  # x = 1: padding
    assert picture_box(frame, np.zeros((0, 2))) == (4, 43, 4, 54)
    assert picture_box(np.zeros((30, 30), np.float32), inside) == (0, 30, 0, 30)
    noisy = rng.random((30, 30)).astype(np.float32)
    assert picture_box(noisy, inside) == (0, 30, 0, 30)


@pytest.mark.parametrize("quality", [95, 75, 40])
def test_picture_box_finds_the_picture_in_jpeg_coded_padding(quality):
    """JPEG codes 8x8 blocks from the frame's corner: the padding's lines that share a block with
    the picture carry the coding's ringing and are not flat. Whatever the padding's width, the box
    is the picture's; the lines within a block of a point are kept."""
    rng = np.random.default_rng(quality)
    picture = 0.3 + 0.02 * rng.standard_normal((50, 70))
    picture[:10, 20:40] = 0.9  # bright regions that the picture's edges cut
    picture[25:35, :12] = 0.8
    picture[-6:, 50:] = 0.7
    for pad in (9, 12, 13, 20):
        frame = jpeg_coded(np.pad(picture, pad), quality)
        assert picture_box(frame, np.array([[35.0 + pad, 25.0 + pad]])) == (pad, pad + 50, pad, pad + 70)
    frame = jpeg_coded(np.pad(picture, 12), quality)  # flat lines end at 8: lines 8 to 11 carry the ringing
    near = np.array([[35.0 + 12, 14.0], [80.0, 30.0]])  # rows 14 and columns 80: within a block of the lines
    assert picture_box(frame, near) == (8, 62, 12, 88)


def test_the_flat_run_read_in_doubling_blocks_is_the_first_line_that_is_not_flat():
    """``_flat_run`` reads blocks of 1, 2, 4, ... lines and stops at the first that holds a line of
    more than one value: the count of flat lines before it, wherever it falls in its block (and
    every line where all are flat), on rows and on a transposed view alike."""
    from d2d_ext.picture import _flat_run

    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 7, 8, 9, 63, 64, 65, 200):
        for run in sorted({0, 1, n // 2, n - 1, n}):
            lines = np.repeat(rng.random((n, 1)), 5, axis=1).astype(np.float32)  # flat lines of their own values
            lines[run:] = rng.random((n - run, 5))
            assert _flat_run(lines) == run
            assert _flat_run(np.ascontiguousarray(lines.T).T) == run  # strided rows
