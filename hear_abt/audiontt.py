"""HEAR module for the ABT audiontt encoder: `hear-validator hear_abt.audiontt`."""

from .hear_api import get_scene_embeddings, get_timestamp_embeddings, module_loader

__all__ = ["get_scene_embeddings", "get_timestamp_embeddings", "load_model"]

load_model = module_loader("audiontt")
