"""Adapters: the only code that touches a deep-learning framework."""

from salience.adapters.base import Need, Outputs, ScoreFn
from salience.adapters.torch import TorchAdapter, as_adapter

__all__ = ["Need", "Outputs", "ScoreFn", "TorchAdapter", "as_adapter"]
