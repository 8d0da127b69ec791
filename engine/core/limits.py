"""The size limits of an input image, in a module of their own (no torch), so the studio can state them
before the engine is imported. `engine.core.images` enforces them."""

MAX_INPUT_PIXELS = 40_000_000
MAX_INPUT_BYTES = 50 * 1024 * 1024  # the same as Streamlit's server.maxUploadSize (50 MB)
