"""stylelab engine: neural style transfer (Gatys et al.) on a pretrained VGG19."""

__version__ = "0.1.0"
