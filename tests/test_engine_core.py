"""The engine's core and the GPU benchmarks run where MLflow and Streamlit are not installed (the lent
GPU machine has PyTorch only)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys
sys.modules["mlflow"] = None  # any import of them now fails
sys.modules["streamlit"] = None
sys.path.insert(0, "benchmarks")
from PIL import Image
from engine.core import adain, config, costs, device, images, lbfgs, transfer, vgg
import cuda_smoke, fast, gpu_profile, half_weights, plain_loop
content = Image.new("RGB", (40, 30), (200, 120, 40))
style = Image.effect_noise((40, 40), 60).convert("RGB")
results = transfer.transfer_batch(content, [style], [config.TransferConfig(size=32, steps=2)] * 2, device="cpu")
print(len(results), results[0].steps_done)
"""


def test_the_engine_core_and_the_gpu_benchmarks_need_neither_mlflow_nor_streamlit():
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["2", "2"]
