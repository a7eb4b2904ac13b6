"""SExtractor's star/galaxy classifier (``CLASS_STAR``).

SExtractor 2.25 classifies every source with a small feed-forward neural
network whose weights are read from a ``.nnw`` file (``STARNNW_NAME``;
``default.nnw`` ships with SExtractor and with galseg).  This module holds the
one reader of that format (`read_nnw`), the network itself (`NeuralNetwork`)
and the input vector SExtractor builds for each source (`class_star`), so that
galseg's ``CLASS_STAR`` is SExtractor's to float precision.

The ``.nnw`` format (SExtractor ``neurro.c``, ``getnnw``): a first line starting
with ``NNW``; then, skipping blank lines and lines whose first non-blank
character is ``#``, one line each of

1. the number of layers followed by the number of neurons of each layer;
2. the input biases (one per input neuron);
3. the input scales;
4. for every layer ``l`` but the last and every neuron ``j`` of layer ``l+1``:
   the ``nn[l]`` weights from layer ``l`` to ``j`` followed by ``j``'s bias;
5. the output biases;
6. the output scales.

The response is ``out = (n_last - outbias) / outscale`` where
``n_0 = input * inscale + inbias`` and ``n_{l+1} = sigmoid(b_l + n_l . W_l)``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["NeuralNetwork", "read_nnw", "load_nnw", "class_star", "classifier_inputs"]

#: Number of isophotal areas SExtractor feeds the classifier (``NISO``).
NISO = 8


@dataclass(frozen=True)
class NeuralNetwork:
    """A feed-forward network as described by a SExtractor ``.nnw`` file.

    Attributes
    ----------
    layers : tuple of int
        Neurons per layer, input layer first.
    inbias, inscale : ndarray
        Input normalisation: ``n0 = input * inscale + inbias``.
    weights : tuple of ndarray
        ``weights[l][i, j]``: weight from neuron ``i`` of layer ``l`` to neuron
        ``j`` of layer ``l + 1``.
    biases : tuple of ndarray
        ``biases[l][j]``: bias of neuron ``j`` of layer ``l + 1``.
    outbias, outscale : ndarray
        Output de-normalisation: ``out = (n_last - outbias) / outscale``.
    source : str
        Where the network was read from.
    """

    layers: tuple[int, ...]
    inbias: np.ndarray
    inscale: np.ndarray
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    outbias: np.ndarray
    outscale: np.ndarray
    source: str = ""

    @property
    def ninputs(self) -> int:
        """Number of input neurons."""
        return self.layers[0]

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """Network response to ``inputs`` of shape ``(N, ninputs)``; returns ``(N, noutputs)``."""
        x = np.atleast_2d(np.asarray(inputs, dtype=np.float64))
        if x.shape[1] != self.ninputs:
            raise ValueError(
                f"the network from {self.source or 'its .nnw file'} takes "
                f"{self.ninputs} inputs, got {x.shape[1]}"
            )
        n = x * self.inscale + self.inbias
        for w, b in zip(self.weights, self.biases):
            # SExtractor's sigmoid: 1 / (1 + exp(-x)); exp overflow -> 0 is the right limit.
            with np.errstate(over="ignore"):
                n = 1.0 / (1.0 + np.exp(-(n @ w + b)))
        return (n - self.outbias) / self.outscale


def _numbers(tokens: list[str], count: int, what: str, where: str) -> np.ndarray:
    if len(tokens) < count:
        raise ValueError(f"{where}: expected {count} numbers for {what}, found {len(tokens)}")
    try:
        return np.array([float(t) for t in tokens[:count]], dtype=np.float64)
    except ValueError:
        raise ValueError(
            f"{where}: non-numeric value in {what}: {' '.join(tokens[:count])}") from None


def read_nnw(path: str | os.PathLike) -> NeuralNetwork:
    """Read a SExtractor ``.nnw`` neural-network file.

    Parameters
    ----------
    path : str or path-like
        The ``.nnw`` file (e.g. ``configs/default.nnw``).

    Returns
    -------
    NeuralNetwork

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a NNW table or is inconsistent (names file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"STARNNW_NAME file not found: {path}")
    with open(path, encoding="ascii", errors="replace") as fh:
        lines = fh.read().splitlines()
    if not lines or not lines[0].startswith("NNW"):
        raise ValueError(f"{path} is NOT a NNW table (first line must start with 'NNW')")
    content = []
    for lineno, line in enumerate(lines[1:], start=2):
        s = line.strip(" \t\r")
        if s and not s.startswith("#"):
            content.append((lineno, s.split()))
    it = iter(content)

    def nxt(what):
        try:
            lineno, tokens = next(it)
        except StopIteration:
            raise ValueError(f"{path}: file ends before the {what}") from None
        return f"{path}, line {lineno}", tokens

    where, tokens = nxt("layer description")
    try:
        nlayers = int(tokens[0])
        layers = tuple(int(t) for t in tokens[1:1 + nlayers])
    except (ValueError, IndexError):
        raise ValueError(f"{where}: bad layer description {' '.join(tokens)!r}") from None
    if nlayers < 2 or len(layers) != nlayers or min(layers) < 1:
        raise ValueError(f"{where}: bad layer description {' '.join(tokens)!r}")
    where, tokens = nxt("input biases")
    inbias = _numbers(tokens, layers[0], "input biases", where)
    where, tokens = nxt("input scales")
    inscale = _numbers(tokens, layers[0], "input scales", where)
    weights, biases = [], []
    for lay in range(nlayers - 1):
        w = np.empty((layers[lay], layers[lay + 1]))
        b = np.empty(layers[lay + 1])
        for j in range(layers[lay + 1]):
            where, tokens = nxt(f"weights of layer {lay + 1}")
            vals = _numbers(tokens, layers[lay] + 1, f"layer {lay + 1} weights + bias", where)
            w[:, j] = vals[:-1]
            b[j] = vals[-1]
        weights.append(w)
        biases.append(b)
    where, tokens = nxt("output biases")
    outbias = _numbers(tokens, layers[-1], "output biases", where)
    where, tokens = nxt("output scales")
    outscale = _numbers(tokens, layers[-1], "output scales", where)
    if np.any(outscale == 0):
        raise ValueError(f"{where}: output scales must be non-zero")
    return NeuralNetwork(layers, inbias, inscale, tuple(weights), tuple(biases),
                         outbias, outscale, str(path))


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> NeuralNetwork:
    return read_nnw(path)


def load_nnw(path: str | os.PathLike) -> NeuralNetwork:
    """`read_nnw` with a cache keyed on the file's path and modification time."""
    p = Path(path).resolve()
    if not p.is_file():
        raise FileNotFoundError(f"STARNNW_NAME file not found: {path}")
    return _load_cached(str(p), p.stat().st_mtime_ns)


def classifier_inputs(iso_areas, peak, analysis_thresh, seeing_fwhm, pixel_scale):
    """SExtractor's classifier input vectors (``analyse.c``, ``endobject``).

    Parameters
    ----------
    iso_areas : array_like, shape (N, 8)
        Areas (pixels) above the 8 isophotes ``thresh * (peak/thresh)**(i/8)``.
    peak : array_like, shape (N,)
        Peak pixel value above the (local) background.
    analysis_thresh : float
        The image's global analysis threshold (``ANALYSIS_THRESH`` times the
        global background RMS for a relative threshold).
    seeing_fwhm : float
        ``SEEING_FWHM`` in arcsec.
    pixel_scale : float
        Pixel scale in arcsec.

    Returns
    -------
    ndarray, shape (N, 10)
        ``log10`` of the seeing-normalised areas, of the peak/threshold ratio
        and of the seeing FWHM, in SExtractor's order.
    """
    iso = np.asarray(iso_areas, dtype=np.float64)
    peak = np.asarray(peak, dtype=np.float64)
    n = iso.shape[0]
    fac2 = (seeing_fwhm / pixel_scale) ** 2
    with np.errstate(divide="ignore"):
        areas = np.where(iso > 0, iso / fac2, 0.01)
        out = np.empty((n, 2 + NISO), dtype=np.float64)
        out[:, 0] = np.log10(areas[:, 0])
        if analysis_thresh > 0:
            out[:, 1] = np.log10(np.where(peak > 0, peak / analysis_thresh, 0.1))
        else:
            out[:, 1] = -1.0
        out[:, 2:1 + NISO] = np.log10(areas[:, 1:])
    out[:, 1 + NISO] = np.log10(seeing_fwhm)
    return out


def class_star(iso_areas, peak, analysis_thresh, seeing_fwhm, pixel_scale,
               network: NeuralNetwork) -> np.ndarray:
    """SExtractor's ``CLASS_STAR`` (stellarity, 0 = galaxy, 1 = star).

    See `classifier_inputs` for the parameters; ``network`` is the
    `NeuralNetwork` of ``STARNNW_NAME``.  Returns float32 like SExtractor.

    Raises
    ------
    ValueError
        If ``seeing_fwhm`` or ``pixel_scale`` is not positive (SExtractor would
        then need a PSF model, which galseg does not support).
    """
    if not seeing_fwhm > 0:
        raise ValueError(
            "SEEING_FWHM must be > 0 for CLASS_STAR (SExtractor's SEEING_FWHM 0 "
            "needs a PSF model, which galseg does not support)")
    if not pixel_scale > 0:
        raise ValueError("pixel scale must be > 0 for CLASS_STAR (set PIXEL_SCALE or give a WCS)")
    if len(np.asarray(peak)) == 0:
        return np.zeros(0, dtype=np.float32)
    out = network(classifier_inputs(iso_areas, peak, analysis_thresh, seeing_fwhm, pixel_scale))
    return out[:, 0].astype(np.float32)
