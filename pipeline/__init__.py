"""Train and apply an image classifier on your own labeled images."""

__version__ = "0.2.0"
