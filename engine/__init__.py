"""stylelab engine: neural style transfer (Gatys et al.) on a pretrained VGG19."""
