"""Models: attention scorers, encoders, decoders and the Seq2Seq that joins them."""

from .attention import SCORERS, Attention, build_scorer, masked_softmax
from .decoders import DecoderState, RNNDecoder, RNNDecoderState
from .encoders import EncoderOutput, RNNEncoder
from .seq2seq import Seq2Seq, build_model

__all__ = [
    "SCORERS", "Attention", "build_scorer", "masked_softmax", "DecoderState", "RNNDecoder",
    "RNNDecoderState", "EncoderOutput", "RNNEncoder", "Seq2Seq", "build_model",
]
