"""Encoders, context transformers and heads of the AVSA model (shared/REFERENCE.md)."""

from trainer.models.audio import AudioEncoder
from trainer.models.avsa_model import PRESETS, AVSAModel, AVSAOutput, Embeddings, Preset
from trainer.models.context import ContextTransformer, DirectionEncoding
from trainer.models.heads import ProjectionHead
from trainer.models.video import VideoEncoder

__all__ = [
    "PRESETS",
    "AVSAModel",
    "AVSAOutput",
    "AudioEncoder",
    "ContextTransformer",
    "DirectionEncoding",
    "Embeddings",
    "Preset",
    "ProjectionHead",
    "VideoEncoder",
]
