"""The galaxy galleries are readable: no panel title lies on the images of the row above."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from simobs.misspecification.plots import plot_gallery


@pytest.mark.parametrize("n", [8, 16, 20])
def test_gallery_titles_stay_off_the_row_above(n):
    rng = np.random.default_rng(0)
    images = rng.random((n, 3, 32, 32)).astype(np.float32)
    titles = [f"sdss_demo\n{1237650000756000000 + i}\nknn={60 - i:.1f}" for i in range(n)]
    fig = plot_gallery(images, titles, "Most atypical observed galaxies (highest knn score)")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = np.array(fig.axes).reshape(-1, 8)
    for row in range(1, len(axes)):
        for col in range(axes.shape[1]):
            above, below = axes[row - 1, col], axes[row, col]
            if not below.images:
                continue
            title = below.title.get_window_extent(renderer)
            image = above.get_window_extent(renderer)
            assert title.y1 <= image.y0 + 0.5, (row, col, title, image)
    # The suptitle clears the first row's titles too.
    top = min(ax.title.get_window_extent(renderer).y1 for ax in axes[0] if ax.images)
    assert fig._suptitle.get_window_extent(renderer).y0 >= top - 0.5
    import matplotlib.pyplot as plt

    plt.close(fig)
