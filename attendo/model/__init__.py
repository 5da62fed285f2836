"""Models: attention scorers, encoders, decoders and the Seq2Seq that joins them."""

from .attention import SCORERS, Attention, build_scorer, masked_softmax
from .cnn import CNNEncoder
from .decoders import RNNDecoder, RNNDecoderState
from .encoders import RNNEncoder
from .interfaces import Decoder, DecoderState, Encoder, EncoderOutput, OutputLayer
from .multihead import MultiHeadAttention
from .positions import LearnedPositions, SinusoidalPositions
from .seq2seq import DECODERS, ENCODERS, Seq2Seq
from .size import build_model
from .transformer import TransformerDecoder, TransformerEncoder
from .transformer_fast import TransformerDecoderState

__all__ = [
    "SCORERS", "Attention", "build_scorer", "masked_softmax", "DecoderState", "RNNDecoder",
    "RNNDecoderState", "EncoderOutput", "RNNEncoder", "Seq2Seq", "build_model", "CNNEncoder",
    "MultiHeadAttention", "SinusoidalPositions", "LearnedPositions", "TransformerEncoder",
    "TransformerDecoder", "TransformerDecoderState", "Encoder", "Decoder", "OutputLayer",
    "ENCODERS", "DECODERS"]
