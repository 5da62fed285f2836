"""Models: attention scorers, encoders, decoders and the Seq2Seq that joins them."""

from .attention import SCORERS, Attention, build_scorer, masked_softmax
from .cnn import CNNEncoder
from .decoders import DecoderState, RNNDecoder, RNNDecoderState
from .encoders import EncoderOutput, RNNEncoder
from .seq2seq import Seq2Seq, build_model
from .transformer import (
    LearnedPositions,
    MultiHeadAttention,
    SinusoidalPositions,
    TransformerDecoder,
    TransformerDecoderState,
    TransformerEncoder,
)

__all__ = [
    "SCORERS", "Attention", "build_scorer", "masked_softmax", "DecoderState", "RNNDecoder",
    "RNNDecoderState", "EncoderOutput", "RNNEncoder", "Seq2Seq", "build_model",
    "CNNEncoder", "MultiHeadAttention", "SinusoidalPositions", "LearnedPositions",
    "TransformerEncoder", "TransformerDecoder", "TransformerDecoderState",
]
