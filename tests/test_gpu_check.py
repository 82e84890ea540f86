"""bench/gpu_check.sh's Python half, run on the CPU with small models: every path the GPU run
takes (families, classifier on device batches, two concurrent GPU-slot jobs, a 2-rank DDP run
through torchrun) is exercised here, so a lent GPU finds no untested code."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402


def test_bf16_peaks_are_looked_up_by_name():
    assert gpu_check.bf16_peak("NVIDIA H100 80GB HBM3") == 989
    assert gpu_check.bf16_peak("NVIDIA H100 PCIe") == 756
    assert gpu_check.bf16_peak("NVIDIA H200") == 989
    assert gpu_check.bf16_peak("NVIDIA A100-SXM4-80GB") == 312
    assert gpu_check.bf16_peak("Tesla T4") is None  # no bf16 tensor cores: --peak-tflops or no MFU


@pytest.mark.slow
def test_gpu_check_runs_every_path_on_the_cpu(tmp_path):
    out, js = tmp_path / "bench.md", tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench/gpu_check.py"), "--device", "cpu", "--tiny",
                           "--steps", "1", "--out", str(out), "--json", str(js)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(js.read_text())
    assert [r["family"] for r in result["families"]] == ["histogan", "cgan", "ldm_unet", "ldm_dit", "vitgan"]
    for r in result["families"]:
        assert r["train_images_s"] > 0 and r["sample_images_s"] > 0 and r["train_gflop_per_image"] > 0
    assert float(result["classifier_train_images_s"]) > 0
    assert sorted(result["two concurrent jobs got GPUs"].split(", ")) == ["fake0", "fake1"]
    table = out.read_text()
    assert "### GPU check" in table and "| vitgan |" in table and "2-rank DDP run" in table


def test_gpu_check_script_refuses_a_machine_without_cuda():
    if __import__("torch").cuda.is_available():
        pytest.skip("a CUDA device is visible")
    proc = subprocess.run(["bash", str(REPO / "bench/gpu_check.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert proc.returncode != 0 and "no CUDA device visible" in proc.stderr
