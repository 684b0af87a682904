"""Plain-PyTorch reference implementations (nanoGPT style) of the papers' models, written
from the papers and their official code, independently of vitgraph's backends. Tests load
the same weights into a compiled spec and into these modules, by state-dict key, and
compare outputs and gradients."""
