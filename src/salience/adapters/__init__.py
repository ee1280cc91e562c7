"""Adapters: the only code that touches a deep-learning framework."""

from salience.adapters.base import Need, Outputs, ScoreFn
from salience.adapters.dispatch import as_adapter
from salience.adapters.torch import TorchAdapter

__all__ = ["Need", "Outputs", "ScoreFn", "TorchAdapter", "as_adapter"]
