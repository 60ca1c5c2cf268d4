"""python -m redvtp_eval.bench [model=…] [bench_size=full|cpu|tiny] [bench_shape=docvqa|docvqa_long|mcq] [pruner=…]
    [prefix_cache=…] [fast_dllm=none|prefix|dual] [threshold=…] [project=full|cpu|tiny]

    python -m redvtp_eval.bench                                   # H100/H200: LLaDA-V size, bf16, DocVQA shape
    python -m redvtp_eval.bench bench_shape=mcq
    python -m redvtp_eval.bench bench_shape=docvqa_long fast_dllm=dual     # 256 tokens in blocks of 32, dual cache
    python -m redvtp_eval.bench workload=results/runs/…/samples.jsonl     # replay a paired job's step counts
    python -m redvtp_eval.bench model=lavida_llada                # LaViDa-LLaDA size, DocVQA page → 840 visual tokens
    python -m redvtp_eval.bench model=lavida_llada prefix_cache=true   # the same with LaViDa's prefix-KV cache
    python -m redvtp_eval.bench model=tiny bench_size=cpu         # reduced size on the CPU
    python -m redvtp_eval.bench model=tiny bench_size=cpu project=full   # … and its forwards' FLOPs at LLaDA-V size
    python -m redvtp_eval.bench model=tiny bench_size=tiny runs=2 warmup=0 'ratios=[1.0,0.25]'

The speed benchmark (Hydra, ``configs/bench.yaml``): the model group's family with random weights at the
chosen size, one synthetic request of the chosen shape with the shape's task settings for that family,
the evaluation's engine with the chosen pruner at every ratio in ``ratios`` against the unpruned model,
the FLOP model's bound, (``project=<size>``) the FLOP model and roofline at another size's dimensions on the
forwards the runs recorded, and (``scoring=true``, uncached runs only) the scoring step against the official
way. Of the model group only ``family``, ``dtype``, ``device`` and ``attn_implementation`` are read:
nothing is loaded or downloaded.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from redvtp_eval.bench.profile import operator_tables
from redvtp_eval.bench.report import device_directory, markdown, write
from redvtp_eval.bench.scoring import scoring
from redvtp_eval.bench.speed import PROJECTED_WEIGHT_BYTES, Projection, speed
from redvtp_eval.bench.workload import (
    architecture,
    generation_settings,
    make_workload,
    random_model,
    replayed_steps,
)
from redvtp_eval.engine.flops import Roofline, denoising_step_flops, prefill_flops, vision_flops
from redvtp_eval.harness.environment import environment
from redvtp_eval.models.llada_v import LladaVConfig, parse_dtype
from redvtp_eval.models.make_tiny import TINY
from redvtp_eval.pruners import make_pruner
from redvtp_eval.pruners.base import check_ratio

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
GOAL_RATIO = 0.25
"""The ratio of the benchmark's goal (DocVQA, r = 0.25): the scoring-step comparison's top-k and the profile use it."""


def bench_config(cfg: DictConfig) -> dict:
    """The composed config as the report records it (the pruner's ``tag`` names evaluation jobs and is left out)."""
    pruner = {key: cfg.pruner[key] for key in cfg.pruner if key != "tag"}
    keys = ("prefix_cache", "fast_dllm", "threshold", "ratios", "warmup", "runs", "scoring", "profile", "seed")
    keys += ("roofline", "workload", "project")
    plain = {key: cfg[key] for key in keys}
    return OmegaConf.to_container(
        OmegaConf.create(
            {
                "model": {key: cfg.model[key] for key in ("family", "dtype", "device", "attn_implementation")},
                "bench_size": cfg.bench_size,
                "bench_shape": OmegaConf.to_container(cfg.bench_shape, resolve=True),  # its task refers to the root
                "pruner": pruner,
                **plain,
            }
        ),
        resolve=True,
    )


def check(config: dict) -> None:
    if config["pruner"]["name"] == "none":
        raise ValueError(
            "the benchmark compares a pruner with the unpruned model: choose pruner=redvtp or pruner=random"
        )
    for ratio in config["ratios"]:
        check_ratio(ratio)
    if config["runs"] < 1 or config["warmup"] < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={config['runs']} warmup={config['warmup']}")
    device = torch.device(config["model"]["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device is cuda but no CUDA device is visible; on a CPU use model=tiny bench_size=cpu")


def projection(family_name: str, size_name: str, run_config: LladaVConfig) -> tuple[Projection, dict]:
    """``project=<size>``: that bench size's network config, as the family's loader reads it, and its config.json."""
    path = CONFIG_DIR / "bench_size" / f"{size_name}.yaml"
    if not path.is_file():
        choices = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise ValueError(f"project={size_name} is not a bench size: choose one of {choices}")
    size = OmegaConf.to_container(OmegaConf.load(path))
    raw = architecture(family_name, size["text"], size["vision"])
    config = TINY[family_name].network_config(raw, "sdpa")
    patches = [(c.vision.image_size, c.vision.patch_size) for c in (config, run_config)]
    if patches[0] != patches[1]:
        raise ValueError(f"project={size_name}: its crops have other patches (image, patch {patches}) than the run's")
    return Projection(size_name, config), raw


def run_bench(cfg: DictConfig, command: str, subfolder: str = "") -> tuple[dict, Path]:
    """Build the workload, run every measurement, write the report (in ``subfolder`` of the device's folder);
    returns it and the JSON path."""
    config = bench_config(cfg)
    check(config)
    size, shape, model_config = config["bench_size"], config["bench_shape"], config["model"]
    family_name, prefix_cache = model_config["family"], config["prefix_cache"]
    settings = generation_settings(family_name, shape, prefix_cache, config["fast_dllm"], config["threshold"])
    replay = replayed_steps(Path(config["workload"])) if config["workload"] else None
    if replay and max(max(counts) for counts in replay.values()) > settings.steps:
        raise ValueError(
            f"workload {config['workload']} ran more steps than bench_shape={shape['name']} plans ({settings.steps}): "
            "choose the shape of the job's task"
        )
    device = torch.device(model_config["device"])
    raw = architecture(family_name, size["text"], size["vision"])
    model = random_model(
        family_name,
        raw,
        parse_dtype(model_config["dtype"]),
        device,
        model_config["attn_implementation"],
        config["seed"],
    )
    workload = make_workload(model, shape, settings, config["seed"])
    projected, projected_raw = (
        projection(family_name, config["project"], model.config) if config["project"] else (None, None)
    )
    facts = environment(device)
    load_before = os.getloadavg()
    options = {key: value for key, value in config["pruner"].items() if key != "name"}
    roofline = Roofline(**config["roofline"])
    speed_results = speed(
        workload,
        config["pruner"]["name"],
        options,
        config["ratios"],
        config["warmup"],
        config["runs"],
        config["seed"],
        roofline,
        replay,
        projected,
    )
    compare_scoring = config["scoring"] and not prefix_cache and settings.fast_dllm == "none"
    scoring_result = scoring(workload, GOAL_RATIO, config["warmup"], config["runs"]) if compare_scoring else None
    load_after = os.getloadavg()
    first = speed_results[0]["baseline"]
    length = first["sequence_length_before"]
    report = {
        "command": command,
        "config": config,
        "environment": facts,
        "load_average": {"start": load_before, "end": load_after},
        "architecture": raw,
        "shape": {
            **{key: value for key, value in shape.items() if key != "task"},
            "gen_length": settings.gen_length,
            "steps": settings.steps,
            "block_length": settings.block_length,
            "prefix_cache": settings.prefix_cache,
            "fast_dllm": settings.fast_dllm,
            "threshold": settings.threshold,
            "workload": config["workload"],
            "replayed_steps": replay,
            "visual_tokens": speed_results[0]["visual_tokens"][0],
            "crops": workload.crops,
            "prompt_tokens": first["prompt_tokens"],
            "sequence_length": length,
        },
        "flops": {
            "vision": vision_flops(model.config, workload.crops),
            "prefill": prefill_flops(model.config.text, first["prompt_tokens"]) if prefix_cache else None,
            "step_unpruned": denoising_step_flops(model.config.text, length, settings.gen_length, prefix_cache),
        },
        "projection": (
            {
                "size": projected.size,
                "architecture": projected_raw,
                "vision_flops": vision_flops(projected.config, workload.crops),
                "weight_bytes": PROJECTED_WEIGHT_BYTES,
            }
            if projected
            else None
        ),
        "speed": speed_results,
        "scoring": scoring_result,
    }
    cache = ("_prefix_cache" if prefix_cache else "") + (
        f"_fast_{settings.fast_dllm}" if settings.fast_dllm != "none" else ""
    )
    cache += f"_threshold{settings.threshold:g}" if settings.threshold is not None else ""
    cache += "_replay" if replay else ""
    stem = f"{family_name}_{shape['name']}_{size['name']}_{config['pruner']['name']}{cache}"
    path = write(report, device_directory(cfg.results_dir, report["environment"]["device"]) / subfolder, stem)
    if config["profile"]:
        pruner = make_pruner(config["pruner"]["name"], ratio=GOAL_RATIO, **options)
        path.with_name(f"{stem}_profile.txt").write_text(operator_tables(workload, pruner, config["seed"]))
    return report, path


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="bench")
def main(cfg: DictConfig) -> None:
    command = " ".join(["python -m redvtp_eval.bench", *HydraConfig.get().overrides.task])
    try:
        report, path = run_bench(cfg, command)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(markdown(report))
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
