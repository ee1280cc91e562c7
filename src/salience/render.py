"""A map drawn on its image, the same way for the command line, the batch runner and the server.

One chain turns a method's map into pictures: :func:`salience.postprocess.display_values`
(channel reduction, smoothing, percentile clip), the colour scale of that one map
(:func:`salience.viz.color_scale`: its sign mode, a diverging colormap centred on zero for a
signed map, a sequential one from zero for a magnitude), the way back onto the photo
(:class:`View`, from the model's crop), the overlay (:func:`salience.viz.overlay`), its
thumbnail, the encoded PNG (:func:`salience.viz.encode_png`) and a titled figure with its
colorbar. :class:`DisplayOptions` is the one description of how that is done; :func:`render`
does it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from salience import postprocess, viz
from salience.errors import InvalidInputError
from salience.images import CropGeometry, PreparedImage

PNG_LEVEL = 1
"""zlib level of every overlay PNG: overlays of noisy maps shrink little more at higher levels."""
MIN_THUMBNAIL = 16
KEY_OPTIONS = 4
"""How many of a method's options its title names."""


class Explained(Protocol):
    """What :func:`render` reads of an :class:`~salience.explanation.Explanation`."""

    method: str
    targets: torch.Tensor
    scores: torch.Tensor
    score_kind: str
    target_names: tuple[tuple[str, ...], ...] | None
    params: Mapping[str, Any]

    def map(self, sample: int = 0, target: int = 0) -> torch.Tensor: ...


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
    sign : str
        How the sign is shown, one of :data:`salience.viz.SIGNS`; chosen per map (``auto``:
        a diverging scale centred on zero for a map with both signs, else its magnitude).
    cmap : str, optional
        Colormap of the overlays (a matplotlib name); None: ``RdBu_r`` for signed maps, ``jet``
        for magnitudes. A diverging colormap on a magnitude uses its upper half (zero neutral).
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
    cmap: str | None = None
    alpha: float = 0.5
    thumbnail: int = 128
    view_size: int | None = None
    sign: str = "auto"

    def __post_init__(self) -> None:
        viz.check_sign(self.sign)
        postprocess.check_reduction(self.reduce)
        postprocess.check_percentile(self.percentile)
        postprocess.check_sigma(self.smooth)
        if not 0.0 <= self.alpha <= 1.0:
            raise InvalidInputError(f"the opacity (alpha) must be in [0, 1], got {self.alpha}")
        if self.cmap is not None:
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
    values : numpy.ndarray
        The display map in the map's own units (reduced, smoothed, clipped) on the view; NaN
        where the model saw nothing.
    scale : salience.viz.ColorScale
        Its colour scale: sign mode, colormap, the values at the colorbar's ends.
    shown : numpy.ndarray
        Where each pixel lies on the colorbar, in [0, 1] (0.5 is zero on a signed map, 0 is
        zero on a magnitude), on the view; NaN where the model saw nothing.
    overlay : numpy.ndarray
        uint8 RGB: :attr:`values` coloured over the view.
    view : View
        The picture it is drawn on.
    display : DisplayOptions
        How it was drawn.
    """

    raw: torch.Tensor
    values: np.ndarray
    scale: viz.ColorScale
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

    def figure(self, title: str) -> Any:
        """A matplotlib figure: the overlay under ``title``, with its colorbar in map units."""
        return viz.map_figure(self.overlay, self.scale, title)

    def figure_png(self, title: str) -> bytes:
        """:meth:`figure` as PNG."""
        return viz.figure_png(self.figure(title))


def render(
    explanation: Explained, k: int, image: PreparedImage | View, display: DisplayOptions
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
    on_input = postprocess.display_values(
        raw, reduce=display.reduce, percentile=display.percentile, smooth=display.smooth
    ).numpy()
    label = f"attribution ({display.reduce})" if raw.ndim == 3 else "attribution"
    scale = viz.color_scale(on_input, display.sign, display.cmap, label=label)
    values = view.place(torch.from_numpy(on_input))
    overlay = viz.overlay(view.image, values, alpha=display.alpha, scale=scale)
    shown = scale.fraction(values)
    return Rendering(raw, values, scale, shown, overlay, view, display)


PLAIN_SIDE = 224
"""Longest side, pixels, of a map drawn without a photo (a 7 × 7 CAM is shown this large)."""


def view_of(image: PreparedImage | View | np.ndarray | None, map_shape: tuple[int, ...]) -> View:
    """What a map is drawn on: a prepared image's photo (its crop mapped back), a view, any
    uint8 RGB or grayscale array (the map stretched over all of it), or None (white)."""
    if isinstance(image, View):
        return image
    if isinstance(image, PreparedImage):
        return View.of(image)
    if image is None:
        height, width = map_shape[-2:]
        scale = PLAIN_SIDE / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        pixels = np.full((*size, 3), 255, np.uint8)
    else:
        pixels = viz.as_rgb_image(image)
        size = pixels.shape[:2]
    return View(pixels, CropGeometry(size, size, (0, 0, *size)))


def draw(
    explanation: Explained,
    image: PreparedImage | View | np.ndarray | None = None,
    *,
    sample: int = 0,
    target: int = 0,
    display: DisplayOptions | None = None,
) -> Rendering:
    """:func:`render` for any sample of a batch and any picture (see :func:`view_of`)."""
    count, targets = explanation.targets.shape
    for name, index, size in (("sample", sample, count), ("target", target, targets)):
        if not (isinstance(index, int) and 0 <= index < size):
            raise InvalidInputError(
                f"{name} {index!r} is out of range: the explanation has {size}; "
                f"give {name}=0..{size - 1}"
            )
    one = _Sample(explanation, sample)
    display = display if display is not None else DisplayOptions()
    shown_on = view_of(image, tuple(one.map(0, target).shape))
    if image is None:
        display = replace(display, alpha=1.0)
    return render(one, target, shown_on, display)


@dataclass(frozen=True)
class _Sample:
    """One sample of an explanation, as a one-image explanation (what :func:`render` reads)."""

    of: Explained
    index: int

    def __getattr__(self, name: str) -> Any:
        return getattr(self.of, name)

    @property
    def targets(self) -> torch.Tensor:
        return self.of.targets[self.index : self.index + 1]

    @property
    def scores(self) -> torch.Tensor:
        return self.of.scores[self.index : self.index + 1]

    @property
    def target_names(self) -> tuple[tuple[str, ...], ...] | None:
        names = self.of.target_names
        return None if names is None else names[self.index : self.index + 1]

    def map(self, sample: int = 0, target: int = 0) -> torch.Tensor:
        return self.of.map(self.index + sample, target)


def probability_of(explanation: Explained, sample: int = 0, target: int = 0) -> float | None:
    """The model's probability of an explained class, where the explanation knows it: its score
    if that is a probability, else the softmax of the outputs it kept; None otherwise."""
    index = int(explanation.targets[sample, target])
    if explanation.score_kind == "probability":
        return float(explanation.scores[sample, target])
    outputs = getattr(explanation, "outputs", None)
    if outputs is None or outputs.ndim != 2 or not 0 <= index < outputs.shape[1]:
        return None
    return float(torch.softmax(outputs[sample].double(), dim=0)[index])


def prediction_text(name: str | None, probability: float | None) -> str:
    """How a class and its probability are written in titles: ``"tabby 62.0%"``."""
    named = name if name is not None else "custom target"
    return named if probability is None else f"{named} {probability:.1%}"


def method_text(explanation: Explained) -> str:
    """The method and its key options, e.g. ``"smoothgrad (n_samples=50, noise=0.15)"``."""
    options = [
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in explanation.params.items()
        if isinstance(value, bool | int | float | str) and value is not None
    ][:KEY_OPTIONS]
    return f"{explanation.method} ({', '.join(options)})" if options else explanation.method


def title(
    explanation: Explained,
    k: int,
    image: str | None,
    probability: float | None = None,
    *,
    prediction: str | None = None,
) -> str:
    """A figure's title: the image, the class and its probability (or ``prediction``, the
    prediction already written in its output's terms), then the method's line."""
    index = int(explanation.targets[0, k])
    names = explanation.target_names
    name = names[0][k] if names else (str(index) if index >= 0 else None)
    head = prediction if prediction is not None else prediction_text(name, probability)
    head = f"{image}: {head}" if image else head
    return f"{head}\n{method_text(explanation)}"


def thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """A copy of a uint8 RGB image whose longest side is at most ``size`` pixels."""
    small = Image.fromarray(image)
    small.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(small)


def encode(image: np.ndarray) -> bytes:
    """A uint8 image as PNG at :data:`PNG_LEVEL`."""
    return viz.encode_png(image, compress_level=PNG_LEVEL)


def sample_title(
    explanation: Explained, sample: int = 0, target: int = 0, image: str | None = None
) -> str:
    """:func:`title` of any sample's map, with the probability the explanation knows."""
    probability = probability_of(explanation, sample, target)
    return title(_Sample(explanation, sample), target, image, probability)
