"""digit_bench: a benchmark and ablation harness for image autoregressive modeling (DiGIT and its baselines).

Importing the package stays light: heavy modules (torch, timm, faiss, diffusers) load only when used.
"""

__version__ = "0.1.0"
