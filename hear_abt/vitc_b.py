"""HEAR module for the ABT vitc_b encoder: `hear-validator hear_abt.vitc_b`."""

from .hear_api import get_scene_embeddings, get_timestamp_embeddings, module_loader

__all__ = ["get_scene_embeddings", "get_timestamp_embeddings", "load_model"]

load_model = module_loader("vitc_b")
