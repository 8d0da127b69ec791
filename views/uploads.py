"""What the upload widgets of the studio and the layers page accept. Light (no torch, no MLflow)."""

from engine.core.limits import MAX_INPUT_BYTES, MAX_INPUT_PIXELS

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"]
UPLOAD_LIMITS = f"Up to {MAX_INPUT_BYTES // 2**20} MB and {MAX_INPUT_PIXELS // 10**6} megapixels per image."
