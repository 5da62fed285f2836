"""Models: attention scorers, encoders, decoders and the Seq2Seq that joins them."""

from .size import build_model

__all__ = ["build_model"]
