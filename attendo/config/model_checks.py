"""The model section's checks on attention variants (``m``, a ModelConfig), apart so
that :mod:`.sections` reads as the list of settings."""

from __future__ import annotations

from .strict import ConfigError


def check_sparse_and_local(m) -> None:
    """Sparse normalizers and local attention: what they need from the rest of the model."""
    for key, allowed in (("attention_normalizer", ("softmax", "sparsemax", "entmax15")),
                         ("local", ("monotonic", "predictive", "previous"))):
        if getattr(m, key) not in allowed:
            raise ConfigError(
                f"model.{key}: {getattr(m, key)!r} is not allowed; choose one of {list(allowed)}"
            )
    if isinstance(m.attention_window, bool) or not isinstance(m.attention_window, int):
        raise ConfigError(f"model.attention_window: expected an integer, got {m.attention_window!r}")
    if m.attention_window < 0:
        raise ConfigError(
            f"model.attention_window: must be >= 0 (0 = global attention), got {m.attention_window}"
        )
    if m.attention_window == 0 and m.local != "monotonic":
        raise ConfigError(
            f"model.local: {m.local!r} has no effect with global attention; set "
            "model.attention_window to the window half-width D > 0"
        )
    if m.attention_window:
        if m.decoder == "transformer":
            raise ConfigError(
                "model.attention_window: local attention is implemented for the RNN decoder "
                "only; the transformer decoder's cross-attention is global (set it to 0)"
            )
        if m.attention == "none":
            raise ConfigError(
                "model.attention_window: local attention needs attention, but "
                "model.attention is 'none'"
            )
        if m.copy and m.local == "predictive":
            raise ConfigError(
                "model.local: 'predictive' scales the attention weights by a Gaussian, so they "
                "no longer sum to 1 and cannot be model.copy's copy distribution; use "
                "'monotonic' or turn copy off"
            )
    has_attention = (m.decoder == "transformer" or m.encoder == "transformer"
                     or m.attention != "none")
    if m.attention_normalizer != "softmax" and not has_attention:
        raise ConfigError(
            "model.attention_normalizer: the model has no attention to normalize "
            "(model.attention is 'none' and no transformer part)"
        )

def check_coverage_and_copy(m) -> None:
    """Coverage (and its window) and copy: what they need from the rest of the model."""
    if m.coverage_window < 1 or m.coverage_window % 2 == 0:
        raise ConfigError(f"model.coverage_window: an odd width >= 1, got {m.coverage_window}")
    if m.coverage_window > 1 and not m.coverage:
        raise ConfigError("model.coverage_window: needs model.coverage: true")
    if m.coverage and m.decoder == "transformer":
        raise ConfigError(
            "model.coverage: the coverage vector feeds the RNN decoder's attention scorer; "
            "the transformer decoder has none (decode.coverage_penalty works with any model)"
        )
    if m.decoder == "rnn" and m.attention == "none":
        for key in ("coverage", "copy"):
            if getattr(m, key):
                raise ConfigError(
                    f"model.{key}: needs attention, but model.attention is 'none'"
                )
