"""One job: one model × task × pruner × ratio, evaluated through lmms-eval into one directory.

Where it sits: ``python -m redvtp_eval`` (Hydra) calls :func:`run_job` with the composed config and the
job directory that Hydra chose. The job checks its inputs, then lets lmms-eval drive the adapter of
:mod:`redvtp_eval.harness.lmms_adapter`, which writes ``samples.jsonl`` as samples finish; lmms-eval scores the
pruned answers and, replayed, the paired unpruned ones; the job then writes ``metrics.json`` last,
which marks the job as finished.

Job directory: ``config.yaml`` (the resolved job config), ``environment.json``, ``samples.jsonl``,
``lmms_eval_results.json`` (+ ``lmms_eval_baseline_results.json``), ``metrics.json``, and W&B files;
``failed.json`` (the error and its traceback) when the job stopped on an exception.
Re-running the same command skips a finished job and resumes a half-finished one from ``samples.jsonl``.
A job gives a ``ratio`` or a ``budget`` (a fraction of the unpruned cost by ``budget_metric``): the adapter then
calibrates the ratio on the first sample, and ``metrics.json`` holds it with the achieved cost under ``budget``.

Data parallelism: under ``accelerate launch`` every rank runs this job on its share of the samples
(lmms-eval splits them by rank) and logs to its own file; rank 0 merges the logs and writes the rest.
"""

from __future__ import annotations

import json
import os
import traceback
from argparse import Namespace
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from redvtp_eval.engine.budget import check_budget
from redvtp_eval.engine.families import FAMILIES
from redvtp_eval.harness.environment import environment
from redvtp_eval.harness.lmms_plugin import link_lmms_eval_tasks
from redvtp_eval.harness.offline_tasks import ROOT, TASKS_DIR, ensure_offline_tasks
from redvtp_eval.harness.sample_scores import sample_outcome
from redvtp_eval.harness.samples_log import SamplesLog, log_path, read_all
from redvtp_eval.harness.summary import format_table, summarize
from redvtp_eval.harness.tracking import wandb_run
from redvtp_eval.models.checkpoint import resolve_checkpoint
from redvtp_eval.models.make_tiny import make_tiny
from redvtp_eval.pruners import PRUNERS
from redvtp_eval.pruners.base import check_ratio

RUN_ONLY_KEYS = ("wandb",)
"""Config keys that may change between a run and its resumption (where results are logged, not what they are)."""
FAILED = "failed.json"


class JobError(Exception):
    """A problem with the job's inputs; the message says what to do."""


def job_config(cfg: DictConfig) -> dict:
    """The resolved config a job directory holds; a ratio job's leaves out the unset budget keys, so that it equals
    what directories written before ``budget`` existed hold (and they resume and skip as before)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    unset = ("budget", "budget_metric") if resolved.get("budget") is None else ()
    return {key: value for key, value in resolved.items() if key not in RUN_ONLY_KEYS + unset}


def claim_directory(job_dir: Path, config: dict) -> None:
    """Record the job's config, or check that a resumed job's directory holds the same one."""
    path = job_dir / "config.yaml"
    if path.exists():
        previous = yaml.safe_load(path.read_text())
        if previous != config:
            raise JobError(
                f"{job_dir} holds a run with another configuration; delete the directory or choose another "
                f"(hydra.run.dir=...). Stored: {previous}, now: {config}"
            )
    else:
        job_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))


def check_family(cfg: DictConfig) -> None:
    """The model's family exists and the task says how to generate with it."""
    if cfg.model.family not in FAMILIES:
        raise JobError(f"model family {cfg.model.family!r} is not one of {', '.join(FAMILIES)}")
    if cfg.model.family not in cfg.task.generation:
        raise JobError(
            f"task {cfg.task.name} has no generation settings for {cfg.model.family}; "
            f"add generation.{cfg.model.family} to its configs/task file"
        )
    for key in ("lmms_task", "include_path"):
        if OmegaConf.is_missing(cfg.task, key):
            raise JobError(f"task {cfg.task.name} needs task.{key}=... (see configs/task/{cfg.task.name}.yaml)")
    tasks = cfg.task.get("tasks", {}).get(cfg.protocol.name, {})
    if "tasks" in cfg.task and cfg.model.family not in tasks:
        raise JobError(
            f"task {cfg.task.name} names no lmms-eval task for protocol={cfg.protocol.name} and {cfg.model.family}; "
            f"add tasks.{cfg.protocol.name}.{cfg.model.family} to its configs/task file"
        )


def overridden_keys(overrides: list[str]) -> set[str]:
    """The config keys a list of Hydra overrides sets (``ratio=0.5``, ``+budget=0.5``, ``~ratio``)."""
    return {override.split("=", 1)[0].lstrip("+~") for override in overrides}


def check_cost_target(cfg: DictConfig, overrides: list[str]) -> None:
    """A job gives a ratio or a budget: ``budget`` (a fraction of the unpruned cost, by ``budget_metric``) replaces
    the default ``ratio``, and one given explicitly next to it (on the command line, or by a sweep) is refused."""
    budget = cfg.get("budget")
    if budget is None:
        return
    check_budget(budget, cfg.get("budget_metric", "effective_visual_tokens"))
    if "ratio" in overridden_keys(overrides):
        raise JobError(
            f"ratio and budget are exclusive: budget={budget} picks the ratio that meets it; drop ratio=, or drop "
            "budget= to run at the ratio you gave"
        )
    if cfg.pruner.name == "none":
        raise JobError("budget picks a pruner's ratio; pruner=none (the unpruned model) has none: choose a pruner")
    if launch_rank()[2] > 1:
        raise JobError(
            "budget calibrates its ratio on the first sample of one process: run it without accelerate launch, or "
            "run the data-parallel job at the ratio metrics.json reports (ratio=...)"
        )


def project_path(path: str) -> Path:
    """A relative path of the configs (``checkpoints/toy-llada-v``) is the project's, wherever the job is started;
    one that exists where the job was started is taken as the user meant it. Hub ids pass through."""
    given = Path(path).expanduser()
    if given.is_absolute() or given.exists() or not (ROOT / given.parts[0]).exists():
        return given
    return ROOT / given


def check_limit(cfg: DictConfig) -> None:
    """A ``limit`` that a task cannot score is refused before anything loads (MME scores whole question pairs:
    cut one and lmms-eval fails after every sample was generated, and again on every resume)."""
    step = cfg.task.get("limit_step", 1)
    if cfg.limit is not None and cfg.limit % step:
        raise JobError(f"task {cfg.task.name} is scored in groups of {step} rows: use a limit divisible by {step}")


def checkpoint_path(cfg: DictConfig) -> str:
    """The model's checkpoint as a local directory or a cached hub id; the tiny one is written on first use."""
    local = project_path(cfg.model.path)
    if cfg.model.make_tiny and not (local / "config.json").exists():
        make_tiny(local, family=cfg.model.family)
    hub_id = FAMILIES[cfg.model.family].hub_id
    return str(resolve_checkpoint(local.resolve() if local.exists() else cfg.model.path, hub_id))


def include_paths(cfg: DictConfig) -> list[str]:
    """Where lmms-eval looks for task YAMLs: the project's ``tasks/``, then the user's ``task.include_path``
    (one folder or a list; relative paths are taken from where the job was started)."""
    extra = cfg.task.get("include_path") or []
    extra = [extra] if isinstance(extra, str) else list(extra)
    missing = [path for path in extra if not Path(path).expanduser().is_dir()]
    if missing:
        raise JobError(f"task.include_path {', '.join(missing)} is not a folder of lmms-eval task YAMLs")
    return [str(TASKS_DIR), *(str(Path(path).expanduser().resolve()) for path in extra)]


def task_manager_for(cfg: DictConfig):
    """lmms-eval's task index: our offline tasks and the user's include path, plus lmms-eval's own unless the
    task is offline. Never downloads."""
    from lmms_eval.tasks import TaskManager

    if cfg.task.offline:
        ensure_offline_tasks()
    link_lmms_eval_tasks()
    return TaskManager(include_path=include_paths(cfg), include_defaults=not cfg.task.offline)


def judge_configured() -> bool:
    """Whether lmms-eval's GPT judge has credentials, by its own variables (``API_TYPE``, then
    ``OPENAI_API_KEY`` or ``AZURE_API_KEY``; lmms-eval's placeholder ``YOUR_API_KEY`` is none)."""
    key = {"openai": "OPENAI_API_KEY", "azure": "AZURE_API_KEY"}.get(os.environ.get("API_TYPE", "openai"))
    return key is not None and os.environ.get(key, "YOUR_API_KEY") not in ("", "YOUR_API_KEY")


def lmms_task_of(cfg: DictConfig) -> tuple[str, str | None]:
    """The lmms-eval task the job runs and, when it is not the configured one, a line saying why: a task
    whose scorer asks a judge (``task.without_judge`` names its judge-free route) runs that route when no
    judge is configured, instead of attempting connections it cannot make and guessing letters."""
    without_judge = cfg.task.get("without_judge")
    if without_judge is None or judge_configured():
        return cfg.task.lmms_task, None
    return without_judge, (
        f"{cfg.task.name}: no judge configured (OPENAI_API_KEY / AZURE_API_KEY unset), so answers no rule can "
        f"match are not sent to one: scoring by lmms-eval's rule-based extractor ({without_judge})"
    )


def load_task(task_manager, name: str):
    """Load the task's data now, so that a missing dataset fails before any model is loaded; returns the task."""
    from lmms_eval.tasks import get_task_dict
    from lmms_eval.utils import load_yaml_config

    if name not in task_manager.all_tasks:
        raise JobError(f"lmms-eval has no task {name!r}")
    try:
        return get_task_dict([name], task_manager)[name]
    except Exception as error:
        source = load_yaml_config(task_manager.task_index[name]["yaml_path"], mode="simple")
        dataset = source.get("dataset_path", "?")
        raise JobError(
            f"the data of {name} ({dataset}) is not in the local Hugging Face cache and this tool never "
            f"downloads. On a machine with network access run `huggingface-cli download --repo-type dataset "
            f"{dataset}` (or `lmms-eval --model dummy --tasks {name}` to fill the datasets cache), then copy "
            f"the cache here. ({type(error).__name__}: {error})"
        ) from None


def check_region(cfg: DictConfig, task) -> None:
    """A pruner that is told where the answer is (``needs_region``: oracle, anti_oracle) runs only on a task whose
    documents say it (an ``answer_box`` column, the toy tasks); refused before the model loads."""
    from redvtp_eval.harness.lmms_adapter import REGION_COLUMN

    if not PRUNERS[cfg.pruner.name].needs_region:
        return
    docs = task.eval_docs
    columns = getattr(docs, "column_names", None) or (list(docs[0]) if len(docs) else [])
    if REGION_COLUMN not in columns:
        raise JobError(
            f"pruner {cfg.pruner.name!r} needs each sample's answer region, but the documents of task "
            f"{cfg.task.name} have no {REGION_COLUMN!r} column; run it on task=redvtp_toy_docvqa or task=redvtp_toy_mcq"
        )


def launch_rank() -> tuple[int, int, int]:
    """(rank, local rank, world size) as ``accelerate launch`` / torchrun set them; (0, 0, 1) in one process."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))


def model_args(cfg: DictConfig, checkpoint: str) -> str:
    """The adapter's arguments as lmms-eval records them: pruner and ratio tell runs apart in its outputs."""
    _, local_rank, world_size = launch_rank()
    device = cfg.model.device
    if world_size > 1 and device == "cuda":
        device = f"cuda:{local_rank}"
    args = {
        "pretrained": checkpoint,
        "family": cfg.model.family,
        "pruner": cfg.pruner.name,
        "dtype": cfg.model.dtype,
        "device": device,
        "attn_implementation": cfg.model.attn_implementation,
        "paired_baseline": cfg.paired_baseline,
        "warmup": cfg.warmup,
        "seed": cfg.seed,
    }
    if cfg.get("budget") is not None:
        args |= {"budget": cfg.budget, "budget_metric": cfg.budget_metric}
    elif cfg.pruner.name != "none":
        args["ratio"] = cfg.ratio
    # A null option is the pruner's default: left out, since lmms-eval would pass it on as the string "None".
    args |= {key: value for key, value in cfg.pruner.items() if key not in ("name", "tag") and value is not None}
    return ",".join(f"{key}={value}" for key, value in args.items())


def evaluate(model, model_arguments: str | None, cfg: DictConfig, task_manager, task: str, job_dir: Path) -> dict:
    """lmms-eval's ``simple_evaluate`` as its CLI calls it: scoring reads the documents without their media
    (an image that does not decode fails its own sample, not the scoring of all), and submissions are
    written into the job directory."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.utils import get_datetime_str

    generation = cfg.task.generation[cfg.model.family]
    cli_args = Namespace(process_with_media=False, output_path=str(job_dir), reasoning_tags=None)
    return simple_evaluate(
        model=model,
        model_args=model_arguments,
        tasks=[task],
        task_manager=task_manager,
        gen_kwargs=",".join(f"{key}={value}" for key, value in generation.items()),
        limit=cfg.limit,
        log_samples=True,
        bootstrap_iters=0,
        process_docs_parallel=1,
        random_seed=cfg.seed,
        datetime_str=get_datetime_str(),
        verbosity="WARNING",
        cli_args=cli_args,
    )


def side_scores(results: dict, name: str, sub_metrics) -> dict:
    """The task's further aggregate scores (MME cognition next to perception), by lmms-eval result key."""
    return {metric: results["results"][name].get(metric) for metric in sub_metrics or []}


def budget_summary(adapter, entries: list[dict]) -> dict:
    """What a budget job's ratio came from and what it achieved: the calibration (sample, ratio, its cost there in
    the fixed shape) and the cost fraction of every measured sample (each over its own unpruned run)."""
    calibration = adapter.calibration
    fractions = [
        entry["budget"]["cost_fraction"]
        for entry in entries
        if entry["failed"] is None and entry["budget"]["cost_fraction"] is not None
    ]
    return {
        "target": calibration.target,
        "metric": calibration.metric,
        "ratio": calibration.ratio,
        "calibrated_on": adapter.calibrated_on,
        "calibration_cost_fraction": calibration.fraction,
        "calibration_runs": len(calibration.tried),
        "cost_fraction_mean": sum(fractions) / len(fractions) if fractions else None,
        "cost_fraction_max": max(fractions, default=None),
        "samples_over_budget": sum(fraction > calibration.target for fraction in fractions),
    }


def dump(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def run_job(cfg: DictConfig, job_dir: Path, sweep: str | None = None, overrides: list[str] = ()) -> dict | None:
    """Run (or resume, or skip) the job in ``job_dir``; ``sweep`` names the W&B group of a multirun; ``overrides``
    are the job's Hydra overrides (a ``ratio`` among them is refused next to a ``budget``).

    Returns the metrics on rank 0 (None on the other ranks of a data-parallel run).
    """
    check_ratio(cfg.ratio)
    check_cost_target(cfg, list(overrides))
    check_family(cfg)
    check_limit(cfg)
    checkpoint = checkpoint_path(cfg)
    rank, _, world_size = launch_rank()
    metrics_path = job_dir / "metrics.json"
    config = job_config(cfg)
    if rank == 0:
        claim_directory(job_dir, config)
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        print(f"already finished: {job_dir}\n{format_table(metrics, cfg.pruner.tag)}")
        return metrics
    failure = job_dir / FAILED
    if rank == 0:
        failure.unlink(missing_ok=True)
    try:
        return _run(cfg, job_dir, checkpoint, config, sweep, rank, world_size)
    except Exception as error:
        if rank == 0:
            dump(failure, {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()})
        raise


def _run(
    cfg: DictConfig, job_dir: Path, checkpoint: str, config: dict, sweep: str | None, rank: int, world_size: int
) -> dict | None:
    task_manager = task_manager_for(cfg)
    name, note = lmms_task_of(cfg)
    if note and rank == 0:
        print(note)
    check_region(cfg, load_task(task_manager, name))
    if rank == 0:
        dump(job_dir / "environment.json", environment(cfg.model.device))

    run_name = f"{cfg.model.path}/{cfg.task.name}/{cfg.pruner.tag}"
    settings = cfg.wandb if rank == 0 else OmegaConf.create({"mode": "disabled"})
    with wandb_run(settings, job_dir, config, run_name, sweep) as tracker:
        from redvtp_eval.harness.lmms_adapter import PrunedDiffusionVLM, RecordedAnswers

        arguments = model_args(cfg, checkpoint)
        own_log = str(log_path(job_dir, rank, world_size))
        adapter = PrunedDiffusionVLM.create_from_arg_string(arguments, {"log_path": own_log})
        results = evaluate(adapter, arguments, cfg, task_manager, name, job_dir)
        entries = read_all(job_dir, world_size)
        metric, scorer = cfg.task.metric, cfg.task.get("sample_scorer", "metric")
        baseline = None
        if any(entry.get("baseline") for entry in entries):
            answers = {(e["task"], e["doc_id"]): (e.get("baseline") or {}).get("prediction", "") for e in entries}
            baseline = evaluate(
                RecordedAnswers(answers, adapter.device), None, cfg, task_manager, name, job_dir / "baseline"
            )
        if rank != 0:
            return None
        pruned_samples = {sample["doc_id"]: sample for sample in results.pop("samples")[name]}
        dump(job_dir / "lmms_eval_results.json", results)
        baseline_score, baseline_samples = None, {}
        if baseline is not None:
            baseline_samples = {sample["doc_id"]: sample for sample in baseline.pop("samples")[name]}
            dump(job_dir / "lmms_eval_baseline_results.json", baseline)
            baseline_score = baseline["results"][name][metric]
        for entry in entries:
            sample = pruned_samples[entry["doc_id"]]
            entry["target"] = sample["target"]
            entry["score"], entry["unparseable"] = sample_outcome(sample, metric, scorer)
            if entry.get("baseline"):
                outcome = sample_outcome(baseline_samples[entry["doc_id"]], metric, scorer)
                entry["baseline"]["score"], entry["baseline"]["unparseable"] = outcome
        SamplesLog(job_dir / "samples.jsonl").rewrite(entries)
        sub_metrics = cfg.task.get("sub_metrics")
        metrics = {
            "model": cfg.model.path,
            "task": cfg.task.name,
            "protocol": cfg.protocol.name,
            "lmms_task": name,
            "scoring_note": note,
            "metric": metric,
            "pruner": cfg.pruner.name,
            "ratio": cfg.ratio if cfg.pruner.name != "none" else 1.0,
            "world_size": world_size,
            **summarize(entries, results["results"][name][metric], baseline_score),
        }
        if adapter.calibration is not None:
            metrics["ratio"] = adapter.calibration.ratio
            metrics["budget"] = budget_summary(adapter, entries)
        metrics["pruned"]["sub_scores"] = side_scores(results, name, sub_metrics)
        if metrics["unpruned"]:
            metrics["unpruned"]["sub_scores"] = side_scores(baseline, name, sub_metrics)
        tracker.log_job(metrics, entries)
    dump(job_dir / "metrics.json", metrics)
    print(format_table(metrics, cfg.pruner.tag))
    return metrics
