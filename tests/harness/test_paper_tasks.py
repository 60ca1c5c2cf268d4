"""protocol=paper's task YAMLs (tasks/paper): the prompt each builds is the string the official fork builds, and
the fork's scorers (``Answer:`` parsing, RealWorldQA's flexible-extract) behave as the fork's do.

The quoted strings are what the forks' task code returns for the fixture documents: ``f"{pre_prompt}{question}
{post_prompt}"`` with the post prompts of RedVTP-LLaDA-V @1d1d09b ``eval/lmms-eval/lmms_eval/tasks/*/`` and
RedVTP-LaViDa @9809edf ``eval/lmms_eval/tasks/*/``.
"""

from __future__ import annotations

import importlib.util

import pytest
from hydra import compose, initialize_config_dir

from redvtp_eval.harness.lmms_plugin import TASKS_DIR, link_lmms_eval_tasks
from redvtp_eval.report.reproduce import CONFIG_DIR

BENCHMARKS = ("ai2d", "realworldqa", "docvqa_val", "infovqa_val", "mme", "mmbench_en_dev")
VQA_DOC = {"question": "What is the date on the letter?", "answers": ["June 5, 1998", "5 June 1998"]}
AI2D_DOC = {"question": "Which label shows the sun?", "options": ["A", "B", "C", "D"], "answer": "1"}
MME_DOC = {"question": "Is there a dog in the image? Please answer yes or no.", "answer": "Yes"}
RWQA_DOC = {
    "question": "Which object is closer?\nA. The car\nB. The tree\nC. The house\nPlease answer directly with only "
    "the letter of the correct option and nothing else.",
    "answer": "B",
}
MMBENCH_DOC = {
    "question": "What is shown?",
    "hint": "nan",
    "A": "a cat",
    "B": "a dog",
    "C": "nan",
    "D": "nan",
    "answer": "A",
    "category": "x",
    "index": 0,
    "source": "s",
    "L2-category": "y",
    "split": "dev",
}

REASONING_VQA = (
    "What is the date on the letter?\nGive the reason and then write your final answer in the format 'Answer: X' "
    "where X is the answer to the question."
)
SHORT_VQA = "What is the date on the letter?\nAnswer the question using a single word or phrase."
FORK_PROMPTS = {
    # (task, doc): the fork's string; the same for both families unless the key names one
    "paper_llada_v_docvqa_val": REASONING_VQA,
    "paper_llada_v_infovqa_val": REASONING_VQA,
    "paper_lavida_docvqa_val": SHORT_VQA,  # the LaViDa fork keeps the reasoning post_prompt commented out
    "paper_lavida_infovqa_val": SHORT_VQA,
    "ai2d": "Which label shows the sun?\nA. A\nB. B\nC. C\nD. D\nAnswer with the option's letter from the given "
    "choices directly.",
    "mme": "Is there a dog in the image?\nAnswer the question using a single word or phrase.",
    # the forks' post_prompt is "", so the question (with its own instruction) is the prompt
    "realworldqa": RWQA_DOC["question"],
    # en_utils joins question and options with a space and adds "\n" before a post_prompt that starts with "\n"
    "mmbench_en_dev": "What is shown? There are several options:\nA. a cat\nB. a dog\n\nAnswer with the option's "
    "letter from the given choices directly.",
}
DOCS = {"docvqa_val": VQA_DOC, "infovqa_val": VQA_DOC, "ai2d": AI2D_DOC, "mme": MME_DOC}
DOCS |= {"realworldqa": RWQA_DOC, "mmbench_en_dev": MMBENCH_DOC}
PAPER_TASKS = [f"paper_{family}_{benchmark}" for family in ("llada_v", "lavida") for benchmark in BENCHMARKS]
PAPER_TASKS += [f"paper_{family}_mmbench_en_dev_static" for family in ("llada_v", "lavida")]  # the judge-free route


def paper_config(task: str) -> dict:
    from lmms_eval.utils import load_yaml_config

    link_lmms_eval_tasks()
    return load_yaml_config(str(TASKS_DIR / "paper" / f"{task}.yaml"), mode="full")


def benchmark_of(task: str) -> str:
    return next(benchmark for benchmark in BENCHMARKS if task.removesuffix("_static").endswith(benchmark))


def prompt(config: dict, doc: dict) -> str:
    """What lmms-eval sends: doc_to_text with the task's default lmms_eval_specific_kwargs."""
    return config["doc_to_text"](doc, dict(config["lmms_eval_specific_kwargs"]["default"]))


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_prompt_is_the_forks(task):
    benchmark = benchmark_of(task)
    expected = FORK_PROMPTS.get(task, FORK_PROMPTS.get(benchmark))
    config = paper_config(task)
    assert config["task"] == task
    assert config["dataset_path"].startswith("lmms-lab-encoder/")  # upstream's path, not the forks' lmms-lab/
    if benchmark == "mmbench_en_dev":
        pytest.importorskip("openai")  # en_utils builds its judge client at import
    assert prompt(config, DOCS[benchmark]) == expected


@pytest.mark.parametrize("family", ["llada_v", "lavida"])
def test_upstream_tasks_are_included_unchanged_where_the_fork_agrees(family):
    from lmms_eval.utils import load_yaml_config

    link_lmms_eval_tasks()
    for benchmark in ("ai2d", "mme"):
        ours = load_yaml_config(str(TASKS_DIR / "paper" / f"paper_{family}_{benchmark}.yaml"), mode="simple")
        theirs = load_yaml_config(str(TASKS_DIR / "_lmms_eval" / benchmark / f"{benchmark}.yaml"), mode="simple")
        assert {k: str(v) for k, v in ours.items() if k not in ("task", "tag")} == {
            k: str(v) for k, v in theirs.items() if k not in ("task", "tag")
        }  # str: lmms-eval's "simple" loader keeps each !function as a yaml node


def tag_parser():
    spec = importlib.util.spec_from_file_location("paper_utils", TASKS_DIR / "paper" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("The letter is dated in the header. Answer: June 5, 1998.", "June 5, 1998"),
        ("**Answer:** 42", "42"),  # '*' removed first
        ("Answer: first. On reflection, Answer: second,", "second"),  # the last tag wins
        ("Answer: 10:30", "30"),  # the fork keeps only what follows the last colon
        ("June 5, 1998", None),  # no tag
        ("", None),
    ],
)
def test_answer_after_tag(response, answer):
    assert tag_parser().answer_after_tag(response) == answer


def test_anls_after_tag_with_and_without_the_tag():
    utils = tag_parser()
    assert utils.anls_after_tag(VQA_DOC, ["Reasoning. Answer: June 5, 1998"]) == {"anls": 1.0, "unparsed": 0}
    # without the tag the fork scores the string "None", whatever the text says
    assert utils.anls_after_tag(VQA_DOC, ["June 5, 1998"]) == {"anls": 0.0, "unparsed": 1}
    assert utils.anls_after_tag({"question": "?", "answers": "None"}, ["no tag here"]) == {"anls": 1.0, "unparsed": 1}


def realworldqa_filtered(task: str, response: str, doc: dict) -> str:
    """The fork's flexible-extract pipeline, built from the task config as lmms-eval builds it."""
    filters = paper_config(task)["filter_list"][0]["filter"]
    responses = [[response]]
    for step in filters:
        kwargs = {key: value for key, value in step.items() if key != "function"}
        responses = step["function"](**kwargs).apply(responses, [doc])
        responses = [r if isinstance(r, list) else [r] for r in responses]
    return responses[0][0]


@pytest.mark.parametrize("family", ["llada_v", "lavida"])
@pytest.mark.parametrize(
    ("response", "filtered"),
    [("B", "B"), ("B.", "B"), ("The tree", "B"), ("(A)", "A"), ("three", "3")],
)
def test_realworldqa_flexible_extract(family, response, filtered):
    config = paper_config(f"paper_{family}_realworldqa")
    assert config["process_results"] is None  # upstream's extract_mcq_answer is not used
    assert config["metric_list"][0]["ignore_case"] and config["metric_list"][0]["ignore_punctuation"]
    assert realworldqa_filtered(f"paper_{family}_realworldqa", response, RWQA_DOC) == filtered


@pytest.mark.parametrize(
    ("family", "protocol", "task", "lmms_task", "metric"),
    [
        ("llada_v", "paper", "docvqa_val", "paper_llada_v_docvqa_val", "anls,none"),
        ("lavida_llada", "paper", "docvqa_val", "paper_lavida_docvqa_val", "anls,none"),
        ("llada_v", "lmms_eval", "docvqa_val", "docvqa_val", "anls,none"),
        ("llada_v", "paper", "realworldqa", "paper_llada_v_realworldqa", "exact_match,flexible-extract"),
        ("llada_v", "lmms_eval", "realworldqa", "realworldqa", "exact_match,none"),
        ("tiny", "paper", "redvtp_toy_docvqa", "redvtp_toy_docvqa", "anls,none"),
    ],
)
def test_protocol_picks_the_lmms_eval_task(family, protocol, task, lmms_task, metric):
    model = {"llada_v": "llada_v", "lavida_llada": "lavida_llada", "tiny": "tiny"}[family]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}", f"task={task}", f"protocol={protocol}"])
    assert (cfg.task.lmms_task, cfg.task.metric) == (lmms_task, metric)


def test_every_benchmark_has_both_protocols_for_every_family():
    from redvtp_eval.engine.families import FAMILIES

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        for benchmark in BENCHMARKS:
            cfg = compose("config", overrides=[f"task={benchmark}"])
            for protocol in ("paper", "lmms_eval"):
                assert set(cfg.task.tasks[protocol]) == set(FAMILIES)
                assert protocol in cfg.task.metrics


def test_paper_grid_uses_the_paper_protocol():
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=paper_tables"])
    assert cfg.protocol.name == "paper"
