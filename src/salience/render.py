"""A map drawn on its image, the same way for the command line, the batch runner and the server.

One chain turns a method's map into pictures: :func:`salience.postprocess.to_display` (channel
reduction, smoothing, percentile clip, normalization), the way back onto the photo
(:class:`View`, from the model's crop), the overlay (:func:`salience.viz.overlay`), its
thumbnail and the encoded PNG (:func:`salience.viz.encode_png`). :class:`DisplayOptions` is the
one description of how that is done; :func:`render` does it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from PIL import Image

from salience import postprocess, viz
from salience.errors import InvalidInputError
from salience.explanation import Explanation
from salience.images import CropGeometry, PreparedImage

PNG_LEVEL = 1
"""zlib level of every overlay PNG: overlays of noisy maps shrink little more at higher levels."""
MIN_THUMBNAIL = 16


@dataclass(frozen=True)
class DisplayOptions:
    """How a map is drawn on its image: post-processing, colours, sizes.

    Attributes
    ----------
    reduce : str
        Channel reduction of input-sized maps (:func:`salience.postprocess.reduce_channels`).
    percentile : float
        Clip the display map at this percentile of its absolute values, in (0, 100].
    smooth : float
        Gaussian σ in pixels of the map; 0 for none.
    cmap : str
        Colormap of the overlays (a matplotlib name).
    alpha : float
        Overlay opacity in [0, 1].
    thumbnail : int
        Longest side of thumbnails, pixels (>= 16).
    view_size : int, optional
        Longest side of the picture the maps are drawn on: a larger photo is shrunk to it first
        (the server's page draws on a 640-pixel view). None: the photo at its own size.
    """

    reduce: str = "abs_max"
    percentile: float = 99.0
    smooth: float = 0.0
    cmap: str = "jet"
    alpha: float = 0.5
    thumbnail: int = 128
    view_size: int | None = None

    def __post_init__(self) -> None:
        postprocess.check_reduction(self.reduce)
        postprocess.check_percentile(self.percentile)
        postprocess.check_sigma(self.smooth)
        if not 0.0 <= self.alpha <= 1.0:
            raise InvalidInputError(f"the opacity (alpha) must be in [0, 1], got {self.alpha}")
        viz.colorize(np.zeros((1, 1)), self.cmap)  # an unknown name fails with suggestions
        for name, low in (("thumbnail", MIN_THUMBNAIL), ("view_size", 1)):
            value = getattr(self, name)
            if name == "view_size" and value is None:
                continue
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise InvalidInputError(
                    f"{name} must be an int >= {low} pixels, got {value!r}; give a larger size"
                )

    def view(self, image: PreparedImage) -> View:
        """The picture this display draws ``image``'s maps on (see :attr:`view_size`)."""
        return View.of(image, self.view_size)


@dataclass(frozen=True)
class View:
    """The photo the maps are drawn on, and where the model's input lies on it.

    Attributes
    ----------
    image : numpy.ndarray
        uint8 ``(H, W, 3)``: the original photo, or a shrunk copy of it.
    geometry : CropGeometry
        From the model's input back onto :attr:`image`.
    """

    image: np.ndarray
    geometry: CropGeometry

    @classmethod
    def of(cls, prepared: PreparedImage, max_side: int | None = None) -> View:
        """The original photo, box-shrunk to ``max_side`` on its longer side when larger."""
        original = prepared.original
        height, width = original.shape[:2]
        if max_side is None or max(height, width) <= max_side:
            return cls(original, prepared.geometry)
        scale = max_side / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        shrunk = Image.fromarray(original).resize((size[1], size[0]), Image.Resampling.BOX)
        # to_original scales by resized/original, so the same crop maps onto the smaller photo
        geometry = CropGeometry(size, prepared.geometry.resized_size, prepared.geometry.crop_box)
        return cls(np.asarray(shrunk), geometry)

    def place(self, saliency: torch.Tensor) -> np.ndarray:
        """A map on the model's input, drawn onto the view (NaN where the model saw nothing)."""
        return self.geometry.to_original(saliency.numpy())


@dataclass(frozen=True)
class Rendering:
    """Map ``k`` of an explanation's first image, drawn.

    Attributes
    ----------
    raw : torch.Tensor
        The method's map at its native resolution.
    shown : numpy.ndarray
        The display map (reduced, smoothed, clipped, in [0, 1]) on the view; NaN where the
        model saw nothing.
    overlay : numpy.ndarray
        uint8 RGB: :attr:`shown` coloured over the view.
    view : View
        The picture it is drawn on.
    display : DisplayOptions
        How it was drawn.
    """

    raw: torch.Tensor
    shown: np.ndarray
    overlay: np.ndarray
    view: View
    display: DisplayOptions = field(repr=False)

    @cached_property
    def png(self) -> bytes:
        """The overlay as PNG."""
        return encode(self.overlay)

    @cached_property
    def thumbnail_png(self) -> bytes:
        """The overlay's thumbnail as PNG."""
        return encode(thumbnail(self.overlay, self.display.thumbnail))

    @cached_property
    def unclipped(self) -> np.ndarray:
        """The display map without the percentile clip, on the view (float32)."""
        display = self.display
        normalized = postprocess.to_display(
            self.raw, reduce=display.reduce, percentile=None, smooth=display.smooth
        )
        return self.view.place(normalized).astype(np.float32)


def render(
    explanation: Explanation, k: int, image: PreparedImage | View, display: DisplayOptions
) -> Rendering:
    """Draw map ``k`` (the k-th explained target) of a one-image explanation on its image.

    Parameters
    ----------
    explanation : Explanation
        Of one image (its first is drawn).
    k : int
        Which of its targets.
    image : PreparedImage or View
        The image the explanation is of, or the view of it made once by
        :meth:`DisplayOptions.view` (for several maps of one image).
    display : DisplayOptions
        How to draw it.
    """
    view = image if isinstance(image, View) else display.view(image)
    raw = explanation.map(0, k)
    shown_on_input = postprocess.to_display(
        raw, reduce=display.reduce, percentile=display.percentile, smooth=display.smooth
    )
    shown = view.place(shown_on_input)
    overlay = viz.overlay(view.image, shown, alpha=display.alpha, cmap=display.cmap)
    return Rendering(raw, shown, overlay, view, display)


def thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """A copy of a uint8 RGB image whose longest side is at most ``size`` pixels."""
    small = Image.fromarray(image)
    small.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(small)


def encode(image: np.ndarray) -> bytes:
    """A uint8 image as PNG at :data:`PNG_LEVEL`."""
    return viz.encode_png(image, compress_level=PNG_LEVEL)
