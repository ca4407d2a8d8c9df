"""gen_lightning: every classic family of generative models in one Lightning codebase."""

__version__ = "0.1.0"
