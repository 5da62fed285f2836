"""The names of the alignment options (no imports: the command line's choices read them
without loading torch)."""

METHODS = ("argmax", "threshold", "shift", "shift-threshold")
WORD_RULES = ("any", "mean")  # pieces to words: see attendo.align
SYMMETRIZE = ("intersect", "union", "grow-diag", "grow-diag-final")  # of two link sets
SOFT_SYMMETRIZE = ("average",)  # of two directions' word weights: see average()
