"""The names of :mod:`salience.models.presets` under their earlier module: preset sidecars
beside a model file and their overrides. New code imports :mod:`salience.models.presets`."""

from __future__ import annotations

from salience.models.presets import (
    CHANNEL_ORDERS,
    LAYOUTS,
    SIDECAR_SUFFIXES,
    ModelPreset,
    PresetOverrides,
    fallback_preset,
    find_sidecar,
    overrides_from_mapping,
    parse_class_names,
    read_labels,
    read_sidecar,
)

__all__ = [
    "CHANNEL_ORDERS",
    "LAYOUTS",
    "SIDECAR_SUFFIXES",
    "ModelPreset",
    "PresetOverrides",
    "fallback_preset",
    "find_sidecar",
    "overrides_from_mapping",
    "parse_class_names",
    "read_labels",
    "read_sidecar",
]
