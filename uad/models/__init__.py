"""Anomaly models. Importing this package registers every model with the registry."""

from uad.models import autoencoder, ensemble, gan, ganomaly, vae, vit  # noqa: F401  (registration side effects)
from uad.models.base import AnomalyModel, AnomalyOutput, Range
from uad.models.registry import (
    ModelOption,
    canonical_name,
    check_hparams,
    check_model_options,
    constructor_options,
    create_model,
    list_models,
    model_class,
    model_description,
    model_options,
    recorded_hparams,
    resolved_options,
)

__all__ = ["AnomalyModel", "AnomalyOutput", "ModelOption", "Range", "canonical_name", "check_hparams", "check_model_options",
           "constructor_options", "create_model", "list_models", "model_class", "model_description", "model_options",
           "recorded_hparams", "resolved_options"]
