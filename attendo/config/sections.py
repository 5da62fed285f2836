"""The sections of a config: what each setting means, its default, and the checks on its
value (:meth:`validate`) that need no other section; :class:`~attendo.config.Config` checks
the settings that involve several."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .model_checks import check_coverage_and_copy, check_sparse_and_local
from .strict import ConfigError, check_finite, positive

# deepest encoder or decoder stack (deeper ones are typos: a layer takes milliseconds to build,
# a million of them minutes; sizes and memory are checked by attendo.model.size)
MAX_LAYERS = 1000


@dataclass
class DataConfig:
    """Where the parallel text comes from and how it becomes ids."""

    # plain text (optionally .gz), or a 2-column TSV when train_tgt is ""; several corpora as a
    # list and/or shell globs ([a.de.gz, "b/*.de"]), paired with train_tgt in sorted order
    train_src: str | list[str] = ""
    train_tgt: str | list[str] = ""
    # per entry of train_src: how many times its pairs appear in each epoch (oversampling)
    train_weights: list[int] = field(default_factory=list)
    valid_src: str = ""
    valid_tgt: str = ""
    test_src: str = ""
    test_tgt: str = ""
    toy: Literal["", "dates", "copy", "reverse", "sort"] = ""  # generated task instead of files
    toy_train_size: int = 20000
    toy_valid_size: int = 500
    toy_test_size: int = 500
    toy_max_len: int = 10  # copy/reverse/sort: longest symbol sequence
    tokenizer: Literal["bpe", "unigram", "word", "char"] = "bpe"
    joint_vocab: bool = True  # one tokenizer and vocabulary for both sides
    vocab_size: int = 8000  # sentencepiece pieces, or most frequent words/chars kept
    min_freq: int = 1
    lowercase: bool = False
    max_len: int = 100  # training pairs longer than this (in pieces) are dropped
    max_ratio: float = 0.0  # drop pairs whose length ratio exceeds this (0 = off)
    skip_bad_lines: bool = False  # skip (and count) empty/invalid/over-long pairs instead of failing
    max_chars: int = 5000  # a line longer than this many characters is bad
    # a folder made by `attendo data prepare` (memory-mapped token arrays); "" = train from text
    # (a large, multi-file or weighted corpus is then prepared into train.out_dir/prepared)
    prepared: str = ""
    spm_sample: int = 200_000  # sentences sampled to train a sentencepiece model
    # bring your own tokenizer instead of training one: a SentencePiece .model (bpe or unigram)
    # or a Hugging Face tokenizers .json (pip install 'attendo[hf]'). tokenizer_model is the
    # source side's (both sides' with joint_vocab, the target's for images), tgt_tokenizer_model
    # the target side's ("" = tokenizer_model's, or data.tokenizer trained). Copied into the
    # model directory; data.tokenizer and vocab_size do not apply to a side that has one
    tokenizer_model: str = ""
    tgt_tokenizer_model: str = ""
    workers: int = 0  # processes that tokenize in `attendo data prepare` (0 = all cores)
    # image: the sources are images (model.encoder: image); train_src, valid_src and test_src
    # are lists of `image<TAB>text` lines (or JSONL {"image": ..., "text": ...}), image paths
    # relative to the list file; the tokenizer settings are the target side's
    src_type: Literal["text", "image"] = "text"
    image_height: int = 32  # images are scaled to this height, keeping their aspect ratio
    image_channels: int = 1  # 1: grayscale, 3: RGB
    image_max_width: int = 2048  # wider images are squeezed to this width

    def validate(self) -> None:
        check_finite("data", self)
        if self.image_channels not in (1, 3):
            raise ConfigError(f"data.image_channels: 1 (grayscale) or 3 (RGB), got {self.image_channels}")
        positive("data.image_height", self.image_height)
        positive("data.image_max_width", self.image_max_width)
        if not self.toy and not self.train_src:
            raise ConfigError("data.train_src: set a training file (or data.toy to a generated task)")
        n_src = len(self.train_src) if isinstance(self.train_src, list) else 1
        if isinstance(self.train_src, list) != isinstance(self.train_tgt, list) and self.train_tgt:
            raise ConfigError("data.train_tgt: give a list when data.train_src is a list, and "
                              "a string when it is a string")
        if self.train_tgt and isinstance(self.train_tgt, list) and len(self.train_tgt) != n_src:
            raise ConfigError(f"data.train_tgt: has {len(self.train_tgt)} entries but "
                              f"data.train_src has {n_src}")
        if self.train_weights and (
            len(self.train_weights) != n_src or min(self.train_weights) < 1
        ):
            raise ConfigError(f"data.train_weights: expected {n_src} whole numbers >= 1 (one "
                              f"per data.train_src entry), got {self.train_weights}")
        positive("data.spm_sample", self.spm_sample)
        if self.workers < 0:
            raise ConfigError(f"data.workers: must be >= 0 (0 = all cores), got {self.workers}")
        if self.toy_max_len < 3:
            raise ConfigError(f"data.toy_max_len: must be >= 3, got {self.toy_max_len}")
        if self.toy_train_size < 1 or self.toy_valid_size < 1 or self.toy_test_size < 0:
            raise ConfigError("data.toy_*_size: must be positive")
        positive("data.vocab_size", self.vocab_size)
        positive("data.min_freq", self.min_freq)
        positive("data.max_len", self.max_len)
        positive("data.max_chars", self.max_chars)
        if self.max_ratio < 0:
            raise ConfigError("data.max_ratio: must be >= 0 (0 disables the ratio filter)")
        if self.tgt_tokenizer_model and self.joint_vocab and self.src_type == "text" and \
                self.tgt_tokenizer_model != self.tokenizer_model:
            raise ConfigError("data.tgt_tokenizer_model: data.joint_vocab shares one tokenizer "
                              "between the sides; set joint_vocab: false, or give the file as "
                              "data.tokenizer_model")
        if (self.tokenizer_model or self.tgt_tokenizer_model) and self.prepared:
            raise ConfigError("data.tokenizer_model: not with data.prepared (attendo data "
                              "prepare trains its tokenizers); train from the text files")


@dataclass
class ModelConfig:
    """The encoder-decoder; see ARCHITECTURE.md for how the parts fit."""

    # rnn (below), cnn (ConvS2S: emb_dim embeddings, enc_hidden channels, enc_layers convolutions)
    # or transformer (d_model, heads, ff_dim; enc_layers / dec_layers deep). Any mix works.
    # image (data.src_type: image): enc_layers 3x3 convolutions to enc_hidden channels
    encoder: Literal["rnn", "cnn", "transformer", "image"] = "rnn"
    decoder: Literal["rnn", "transformer"] = "rnn"
    rnn_type: Literal["gru", "lstm"] = "gru"
    emb_dim: int = 128
    enc_hidden: int = 256  # per direction
    enc_layers: int = 1
    bidirectional: bool = True
    dec_hidden: int = 256
    dec_layers: int = 1
    attention: Literal["none", "dot", "general", "additive", "scaled_dot", "location"] = "additive"
    attention_style: Literal["bahdanau", "luong"] = "bahdanau"
    input_feeding: bool = True
    bridge: bool = True  # initialise the decoder from the encoder's final state
    out_dim: int = 0  # size of the attentional vector (0 = dec_hidden, or emb_dim when tied)
    tie_output: bool = False  # share target embeddings with the output layer
    dropout: float = 0.2
    location_max_len: int = 256  # longest source the location scorer can attend over
    # Transformer parts (Vaswani et al. 2017); the RNN keys above size RNN and CNN parts only
    d_model: int = 256  # width of embeddings, attention and every layer output
    heads: int = 4  # attention heads; d_model must divide by heads
    ff_dim: int = 1024  # inner size of the position-wise feed-forward layers
    attn_dropout: float = 0.1  # dropout on attention weights (model.dropout: everywhere else)
    norm: Literal["pre", "post"] = "pre"  # LayerNorm before each sub-layer, or after the residual
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"  # (the CNN always learns them)
    max_positions: int = 512  # learned positions: longest sequence they cover
    attn_layer: int = -1  # decoder layer whose cross-attention (mean over heads) is "the" attention
    cnn_kernel: int = 3  # CNN encoder: convolution width (odd, so outputs align with inputs)
    tie_src_tgt: bool = False  # one embedding matrix for both sides (needs data.joint_vocab)
    # coverage vector fed to the attention scorer (Tu et al. 2016; See et al. 2017; RNN decoder)
    coverage: bool = False
    # the score of source position j sees the coverage of j-r..j+r (a convolution of this odd
    # width over the coverage vector: location-aware attention, Chorowski et al. 2015); 1 = j's own
    coverage_window: int = 1
    copy: bool = False  # pointer-generator: copy source words, incl. unknown ones (See et al. 2017)
    # Show, Attend and Tell's gate on the context, c_i * sigmoid(w . query + b) (Xu et al. 2015,
    # sec. 4.2.1): the decoder can turn its look at the source down (RNN decoder with attention)
    context_gate: bool = False
    # attention weights of every attention in the model: softmax, or the sparse sparsemax
    # (Martins & Astudillo 2016) / entmax15 (Peters et al. 2019), which give exact zeros
    attention_normalizer: Literal["softmax", "sparsemax", "entmax15"] = "softmax"
    # local attention (Luong et al. 2015, sec. 3.2; RNN decoder): window half-width D, 0 = global
    attention_window: int = 0
    # local window centre: monotonic (p_i = i), predictive (learned p_i, Gaussian weighting)
    # or previous (the last step's attention peak: a monotonic reader, e.g. of images)
    local: Literal["monotonic", "predictive", "previous"] = "monotonic"
    # image encoder: 2x2 max poolings after the first convolutions (a region is 2^image_pool
    # pixels square), and what runs over the region grid: nothing (2-D positions), a BiLSTM
    # along each row (im2markup), a BiGRU over the columns (with attention: none, the
    # bottleneck baseline), or conv: 1-D convolutions over the columns, no positions (length
    # generalization, with model.coverage_window)
    image_pool: int = 2
    image_rnn: Literal["none", "rows", "columns", "conv"] = "none"

    def validate(self) -> None:
        check_finite("model", self)
        for key in ("emb_dim", "enc_hidden", "enc_layers", "dec_hidden", "dec_layers"):
            positive(f"model.{key}", getattr(self, key))
        for key in ("enc_layers", "dec_layers"):
            if getattr(self, key) > MAX_LAYERS:
                raise ConfigError(
                    f"model.{key}: {getattr(self, key):,} layers is more than the {MAX_LAYERS:,} "
                    "a stack may have (each layer is a module built one by one)"
                )
        positive("model.location_max_len", self.location_max_len)
        if self.out_dim < 0:
            raise ConfigError("model.out_dim: must be >= 0 (0 picks a default)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}")
        if self.decoder == "rnn" and self.tie_output and self.out_dim not in (0, self.emb_dim):
            raise ConfigError(
                f"model.tie_output: needs out_dim == emb_dim ({self.emb_dim}), got {self.out_dim}"
            )
        if (self.decoder == "rnn" and self.tie_output and self.attention == "none"
                and self.emb_dim != self.dec_hidden):
            raise ConfigError(
                "model.tie_output: without attention the output layer reads the decoder state, "
                f"so emb_dim ({self.emb_dim}) must equal dec_hidden ({self.dec_hidden})"
            )
        self._validate_transformer_and_cnn()
        check_coverage_and_copy(self)
        check_sparse_and_local(self)

    def _validate_transformer_and_cnn(self) -> None:
        if "transformer" in (self.encoder, self.decoder):
            for key in ("d_model", "heads", "ff_dim"):
                positive(f"model.{key}", getattr(self, key))
            if self.d_model % self.heads:
                raise ConfigError(
                    f"model.heads: d_model ({self.d_model}) must be divisible by heads "
                    f"({self.heads})"
                )
            if not 0.0 <= self.attn_dropout < 1.0:
                raise ConfigError(f"model.attn_dropout: must be in [0, 1), got {self.attn_dropout}")
        positive("model.max_positions", self.max_positions)
        if self.encoder == "image":
            if not 0 <= self.image_pool <= self.enc_layers:
                raise ConfigError(f"model.image_pool: must be in 0..enc_layers "
                                  f"({self.enc_layers}), got {self.image_pool}")
            if self.enc_hidden % 4:
                raise ConfigError("model.enc_hidden: the image encoder's width must divide by 4 "
                                  f"(row and column positions, two directions), got {self.enc_hidden}")
            for key in ("copy", "tie_src_tgt"):
                if getattr(self, key):
                    raise ConfigError(f"model.{key}: needs a text source; an image has no words")
        if self.encoder == "cnn" and (self.cnn_kernel < 1 or self.cnn_kernel % 2 == 0):
            raise ConfigError(f"model.cnn_kernel: must be odd and >= 1, got {self.cnn_kernel}")
        if self.decoder == "transformer":
            if self.attention == "none":
                raise ConfigError(
                    "model.attention: 'none' is for the RNN decoder; the transformer decoder "
                    "always attends (multi-head cross-attention), so leave model.attention unset"
                )
            if not -self.dec_layers <= self.attn_layer < self.dec_layers:
                raise ConfigError(
                    f"model.attn_layer: {self.attn_layer} is not a decoder layer "
                    f"(dec_layers={self.dec_layers}; use 0..{self.dec_layers - 1} or -1 for the last)"
                )
        if self.tie_src_tgt and self.src_emb_dim != self.tgt_emb_dim:
            raise ConfigError(
                f"model.tie_src_tgt: source embeddings ({self.src_emb_dim}) and target embeddings "
                f"({self.tgt_emb_dim}) differ in size (transformer parts use d_model, "
                "RNN and CNN parts emb_dim)"
            )

    @property
    def src_emb_dim(self) -> int:
        return self.d_model if self.encoder == "transformer" else self.emb_dim

    @property
    def tgt_emb_dim(self) -> int:
        return self.d_model if self.decoder == "transformer" else self.emb_dim

    @property
    def attn_vector_dim(self) -> int:
        if self.out_dim:
            return self.out_dim
        return self.emb_dim if self.tie_output else self.dec_hidden


@dataclass
class GuidedAlignmentConfig:
    """Guided alignment (Garg et al. 2019): a cross-entropy between the decoder's attention
    and given word links, added to the training loss (``train.guided_alignment``)."""

    # Pharaoh links (0-based ``i-j``: source word i, target word j, whitespace words of the raw
    # training text), one line per training pair in data.train_src order; "" = off
    file: str = ""
    weight: float = 0.1  # lambda of the alignment loss (per aligned target piece)
    # Transformer decoder: the supervised cross-attention layer (null = model.attn_layer) and
    # head; the RNN decoder's single attention is supervised and these are ignored
    layer: int | None = None
    head: int = 0
    # supervise the attention row whose *input* is target piece t (it predicts piece t+1)
    # instead of the row that predicts piece t: the row ``attendo align --method shift`` reads
    # (Chen et al. 2020); false = the predicting row, read by ``argmax``/``threshold``
    shift: bool = False

    def validate(self) -> None:
        check_finite("train.guided_alignment", self)
        if self.file and self.weight <= 0:
            raise ConfigError(
                f"train.guided_alignment.weight: must be > 0, got {self.weight}")


@dataclass
class TrainConfig:
    """Optimisation, validation, checkpoints and budgets."""

    out_dir: str = "runs/model"
    seed: int = 42
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    # fp32 | bf16 (autocast to bfloat16; weights and optimizer stay fp32) | fp16 (CUDA only, with a
    # gradient scaler) | amp (bf16 where the device supports it, else fp16 + scaler)
    precision: Literal["fp32", "bf16", "fp16", "amp"] = "fp32"
    accum_steps: int = 1  # gradient accumulation: batches per optimizer step
    num_workers: int = 0  # data-loading worker processes (0 = collate in the training process)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    schedule: Literal["constant", "plateau", "inverse_sqrt", "linear"] = "constant"
    warmup_steps: int = 0
    plateau_factor: float = 0.5  # lr *= factor after plateau_patience validations without gain
    plateau_patience: int = 2
    min_lr: float = 1e-5
    clip_norm: float = 5.0  # 0 disables clipping
    label_smoothing: float = 0.0
    batch_size: int = 64
    batch_type: Literal["sentences", "tokens"] = "sentences"
    normalization: Literal["tokens", "sentences"] = "tokens"  # what the summed loss is divided by
    max_steps: int = 0  # 0 = no limit; training stops at the first limit reached
    max_epochs: int = 0
    max_minutes: float = 0.0
    log_every: int = 50
    valid_every: int = 400  # also the checkpoint interval
    valid_bleu: bool = True  # greedy-decode the dev set for BLEU at each validation
    valid_max_sents: int = 500  # BLEU on at most this many dev sentences
    early_stopping_metric: Literal["ppl", "bleu"] = "ppl"
    patience: int = 0  # stop after this many validations without improvement (0 = never)
    keep_last: int = 3  # step checkpoints kept besides best and last (0 = keep all)
    progress: bool = True  # tqdm progress bar
    # also log the metrics for TensorBoard into OUT/tensorboard (pip install 'attendo[tensorboard]';
    # then: tensorboard --logdir runs); metrics.jsonl is written either way
    tensorboard: bool = False
    # lambda of the coverage loss, in the form coverage_loss_form names
    coverage_loss: float = 0.0
    # min: sum_i sum_j min(a_ij, cov_ij) (See et al. 2017; needs model.coverage);
    # doubly_stochastic: sum_j (1 - sum_i a_ij)^2, every source position (image region) looked
    # at once over the output (Xu et al. 2015, eq. 14; any attention model)
    coverage_loss_form: Literal["min", "doubly_stochastic"] = "min"
    # See et al.'s two-phase recipe: before this update the model trains as if it had no
    # coverage (the coverage weights, which start at 0, stay at 0 and the coverage loss is off);
    # from it on both are on. 0 = coverage from the first update
    coverage_from_step: int = 0
    # attention supervised by word links: {file, weight, layer, head} (GuidedAlignmentConfig)
    guided_alignment: GuidedAlignmentConfig = field(default_factory=GuidedAlignmentConfig)
    # fine-tuning: a trained model directory to start from. Its tokenizers and vocabularies are
    # used (not rebuilt) and its model.safetensors loaded; tensors this model has and the file
    # lacks (e.g. coverage weights, which start at 0) keep their initialisation; optimizer,
    # schedule and step start afresh. "" = train from scratch
    init_from: str = ""

    def validate(self) -> None:
        check_finite("train", self)
        self.guided_alignment.validate()
        if self.lr <= 0:
            raise ConfigError(f"train.lr: must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas: expected two numbers in [0, 1), got {self.betas}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        for key in ("batch_size", "log_every", "valid_every", "valid_max_sents", "accum_steps"):
            positive(f"train.{key}", getattr(self, key))
        for key in ("max_steps", "max_epochs", "warmup_steps", "patience", "keep_last", "threads",
                    "num_workers", "coverage_from_step"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}: must be >= 0")
        for key in ("max_minutes", "clip_norm", "weight_decay", "min_lr"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}: must be >= 0, got {getattr(self, key)}")
        if not 0 < self.plateau_factor < 1:
            raise ConfigError("train.plateau_factor: must be in (0, 1)")
        if self.schedule == "linear" and self.max_steps == 0:
            raise ConfigError("train.max_steps: the linear schedule decays to 0 at max_steps; set it")
        if self.schedule == "inverse_sqrt" and self.warmup_steps == 0:
            raise ConfigError("train.warmup_steps: inverse_sqrt needs warmup_steps > 0")
        if self.coverage_loss < 0:
            raise ConfigError(f"train.coverage_loss: must be >= 0, got {self.coverage_loss}")
        if self.init_from and Path(self.init_from).resolve() == Path(self.out_dir).resolve():
            raise ConfigError("train.init_from: is train.out_dir; fine-tune into another "
                              "directory (the run would overwrite the model it starts from)")


@dataclass
class DecodeConfig:
    """Search settings used by translate, evaluate and validation."""

    beam_size: int = 5
    n_best: int = 1
    length_penalty: float = 0.0  # GNMT alpha >= 0: score / ((5 + len) / 6) ** alpha; 0 = off
    max_len_ratio: float = 2.0  # output at most ratio * source length + 10 tokens ...
    max_len: int = 250  # ... and never more than this
    batch_size: int = 64  # sentences per decoding batch
    max_input_tokens: int = 400  # longer inputs are truncated with a warning
    # GNMT beta: score + beta * sum_j log(min(sum_i a_ij, 1)) for finished hypotheses; 0 = off
    coverage_penalty: float = 0.0
    block_ngram_repeat: int = 0  # forbid repeating any n-gram of this size (0 = off)
    # when beam search ends a sentence: first_k, once beam_size hypotheses have finished
    # (OpenNMT-py, fairseq, Joey NMT); exact, only once no live hypothesis can beat the best
    # finished ones (never a lower model score; CTranslate2's rule without penalties)
    stop_rule: Literal["first_k", "exact"] = "first_k"
    # bf16: matrix products in bfloat16 while searching (autocast; scores stay fp32). Fast on
    # CPUs with AVX512-BF16/AMX and on GPUs. int8 (CPU only): linear layers dynamically
    # quantized to int8 (1.12-2.24x the fp32 speed on CPU in BENCHMARKS.md). Outputs can
    # differ slightly.
    precision: Literal["fp32", "bf16", "int8"] = "fp32"

    def validate(self) -> None:
        check_finite("decode", self)
        for key in ("beam_size", "n_best", "max_len", "batch_size", "max_input_tokens"):
            positive(f"decode.{key}", getattr(self, key))
        if self.length_penalty < 0:
            # beam search stops a sentence early once no live hypothesis can beat its finished
            # ones; the bound it uses holds because lp(len) grows with len, i.e. alpha >= 0
            raise ConfigError(
                f"decode.length_penalty: must be >= 0 (GNMT alpha; 0 = off, larger favours "
                f"longer outputs), got {self.length_penalty}"
            )
        if self.n_best > self.beam_size:
            raise ConfigError(f"decode.n_best: must be <= beam_size ({self.beam_size})")
        if self.max_len_ratio <= 0:
            raise ConfigError("decode.max_len_ratio: must be > 0")
        if self.coverage_penalty < 0:
            raise ConfigError(f"decode.coverage_penalty: must be >= 0, got {self.coverage_penalty}")
        if self.block_ngram_repeat < 0:
            raise ConfigError(
                f"decode.block_ngram_repeat: must be >= 0 (0 = off), got {self.block_ngram_repeat}"
            )
