from __future__ import annotations

import subprocess
import sys

from redvtp_eval.models.make_tiny import make_tiny


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)


def test_make_tiny_then_load_then_generate_from_the_command_line(tmp_path):
    made = run("redvtp_eval.models.make_tiny", str(tmp_path / "tiny"))
    assert made.returncode == 0, made.stderr
    assert {p.name for p in (tmp_path / "tiny").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    result = run(
        "redvtp_eval.engine.generate",
        "--model",
        str(tmp_path / "tiny"),
        "--ratio",
        "0.25",
        "--gen-length",
        "8",
        "--steps",
        "4",
        "--block-length",
        "8",
    )
    assert result.returncode == 0, result.stderr
    unpruned, pruned = result.stdout.splitlines()[:2]
    assert "visual  3627 -> 3627" in unpruned
    assert "visual  3627 -> 906" in pruned


def test_same_seed_same_checkpoint(tmp_path):
    first = make_tiny(tmp_path / "a", seed=3)
    second = make_tiny(tmp_path / "b", seed=3)
    other = make_tiny(tmp_path / "c", seed=4)
    weights = [(d / "model.safetensors").read_bytes() for d in (first, second, other)]
    assert weights[0] == weights[1] != weights[2]


def test_missing_checkpoint_is_a_message_not_a_traceback(tmp_path):
    result = run("redvtp_eval.engine.generate", "--model", str(tmp_path / "absent"))
    assert result.returncode == 2
    assert "huggingface-cli download GSAI-ML/LLaDA-V" in result.stderr
    assert "Traceback" not in result.stderr
