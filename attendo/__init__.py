"""attendo: attention-based sequence-to-sequence models you can train, decode, evaluate and see."""

__version__ = "0.1.0"

import importlib  # noqa: E402

# the public names, each imported on first use (PEP 562): ``attendo --help`` does not load torch
_HOME = {"Config": "config", "ConfigError": "config", "load_config": "config",
         "TextError": "data.corpus", "Sampling": "search", "Translation": "translator",
         "Translator": "translator", "load": "translator"}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _HOME[name] == "translator":
        importlib.import_module(".align.links", __name__)  # return_alignment's word links
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)


__all__ = ["Config", "ConfigError", "Sampling", "TextError", "Translation", "Translator",
           "load", "load_config", "__version__"]
