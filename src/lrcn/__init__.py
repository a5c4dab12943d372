"""lrcn: visual question answering with Layer-residual Co-Attention Networks."""

__version__ = "0.1.0"
