"""attendo: attention-based sequence-to-sequence models you can train, decode, evaluate and see."""

__version__ = "0.1.0"

from . import align as _align  # noqa: E402
from . import translator as _translator  # noqa: E402
from .config import Config, ConfigError, load_config  # noqa: E402
from .data.corpus import TextError  # noqa: E402
from .search import Sampling  # noqa: E402
from .translator import Translation, Translator, load  # noqa: E402

_translator.word_links = _align.translation_links  # return_alignment, wired from above

__all__ = ["Config", "ConfigError", "Sampling", "TextError", "Translation", "Translator",
           "load", "load_config", "__version__"]
