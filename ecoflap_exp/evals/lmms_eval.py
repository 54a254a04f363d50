"""lmms-eval tasks (MME, POPE, ScienceQA-IMG, TextVQA, GQA, VQAv2, ...) on the in-memory (pruned)
image-text generator, through lmms-eval's Python API: `simple_evaluate` on an `lmms` model object that
answers each request with the adapter's own `generate` (its processor, its chat template), so
nothing is saved first, as eval=lm_eval runs lm-evaluation-harness.

Tasks. lmms-eval 0.7 from PyPI ships each task's utils.py but none of its YAML files
(EvolvingLMMs-Lab/lmms-eval#1215), so lmms-eval alone knows no task. TASKS holds lmms-eval 0.7's own
configs (lmms_eval/tasks/<dir>/*.yaml at tag v0.7, with the `default` prompts) of six tasks, their
functions taken from the installed utils.py. A task that lmms-eval's own index (a source install) or
`include_path` (a folder of task YAMLs) knows is read from there instead. Groups and tags are not
expanded: list their tasks.

Datasets. A task reads its `dataset_path` from the Hugging Face hub, or offline from the HF cache;
`dataset_dirs` maps a task to a folder written by `DatasetDict.save_to_disk`, read with lmms-eval's
own offline switch (`dataset_kwargs: {load_from_disk: true}`, ConfigurableTask.download). The tasks
and their datasets load in `check_data`, before any model loads, so a missing dataset stops the run
there, naming the task and the fix. GQA's documents also read `lmms-lab/GQA`'s
`testdev_balanced_images` from the hub or its cache (its process_docs), a local copy or not.

Generation. A request is (context, generation kwargs, doc_to_visual, doc_id, task, split): the image
is doc_to_visual of the task's document, the prompt the context (the task's question and its
post-prompt, e.g. "\\nAnswer the question using a single word or phrase."), which `generate` puts in
the model's one-turn chat. Decoding is greedy or beam search (max_new_tokens, num_beams), batched
`batch_size` requests of one task at a time; an answer is cut at the first of the task's `until`
strings, as lmms-eval's own models cut theirs. Only tasks of one image per question, answered by
generation, run: a log-likelihood (multiple-choice) or multi-round task is refused by name.

Metrics are flattened as eval=lm_eval flattens them, "<task>/<metric>" ("pope_accuracy,none" ->
"pope/pope_accuracy"), stderrs where lmms-eval computed them; lmms-eval's results JSON (results,
configs, versions, n-shot, higher_is_better, n-samples; not the samples) goes into the record's
eval_info beside them. Submission files (TextVQA's) are written under `output_dir`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image

from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.base import ReadsSplit
from ecoflap_exp.evals.lm_eval import FULL_RESULTS, flatten
from ecoflap_exp.extras import require_import
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.capabilities import GeneratesFromImages
from ecoflap_exp.options import Count, Names, NonNegativeInt

#: the generation settings passed on to `generate`; the others (top_p, lmms-eval's LLaVA's
#: image_aspect_ratio) mean nothing to greedy or beam decoding
DECODING = ("max_new_tokens", "num_beams", "length_penalty", "repetition_penalty")
#: max_new_tokens where a task sets none (TextVQA), as lmms-eval's qwen2_vl model defaults it
DEFAULT_MAX_NEW_TOKENS = 128
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
GREEDY_16 = {"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False}


class Function(str):
    """A function of lmms-eval's installed task code, "<task dir>.<module>.<name>" (a YAML `!function`)."""


def exact_match() -> dict[str, Any]:
    return {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True,
            "ignore_punctuation": True}


def scores(module: str, metrics: dict[str, str]) -> list[dict[str, Any]]:
    """metric_list entries: each metric aggregated by its function of `module`."""
    return [{"metric": metric, "aggregation": Function(f"{module}.{aggregate}"), "higher_is_better": True}
            for metric, aggregate in metrics.items()]


def prompts(post_prompt: str, **more: Any) -> dict[str, Any]:
    return {"default": {"pre_prompt": "", "post_prompt": post_prompt, **more}}


#: lmms-eval 0.7's task configs (the v0.7 tag's YAML files, other models' prompt variants left out)
TASKS: dict[str, dict[str, Any]] = {
    "mme": {
        "dataset_path": "lmms-lab/MME", "dataset_kwargs": {"token": True}, "test_split": "test",
        "output_type": "generate_until", "doc_to_visual": Function("mme.utils.mme_doc_to_visual"),
        "doc_to_text": Function("mme.utils.mme_doc_to_text"), "doc_to_target": "answer",
        "generation_kwargs": GREEDY_16, "process_results": Function("mme.utils.mme_process_results"),
        "metric_list": scores("mme.utils", {"mme_perception_score": "mme_aggregate_results",
                                            "mme_cognition_score": "mme_aggregate_results"}),
        "lmms_eval_specific_kwargs": prompts(SHORT_ANSWER), "metadata": [{"version": 0.0}],
    },
    "pope": {
        "dataset_path": "lmms-lab/POPE", "dataset_kwargs": {"token": True}, "test_split": "test",
        "output_type": "generate_until", "doc_to_visual": Function("pope.utils.pope_doc_to_visual"),
        "doc_to_text": Function("pope.utils.pope_doc_to_text"), "doc_to_target": "answer",
        "generation_kwargs": {**GREEDY_16, "max_new_tokens": 128},
        "process_results": Function("pope.utils.pope_process_results"),
        "metric_list": scores("pope.utils", {f"pope_{m}": f"pope_aggregate_{m}" for m in
                                             ("accuracy", "precision", "recall", "f1_score", "yes_ratio")}),
        "lmms_eval_specific_kwargs": prompts(SHORT_ANSWER), "metadata": [{"version": 0.0}],
    },
    "scienceqa_img": {
        "dataset_path": "lmms-lab/ScienceQA", "dataset_name": "ScienceQA-IMG", "dataset_kwargs": {"token": True},
        "test_split": "test", "output_type": "generate_until",
        "doc_to_visual": Function("scienceqa.utils.sqa_doc_to_visual"),
        "doc_to_text": Function("scienceqa.utils.sqa_doc_to_text"),
        "doc_to_target": Function("scienceqa.utils.sqa_doc_to_target"),
        "generation_kwargs": {"max_new_tokens": 16, "temperature": 0, "do_sample": False},
        "metric_list": [exact_match()], "process_results": Function("scienceqa.utils.sqa_process_results"),
        "lmms_eval_specific_kwargs": prompts("\nAnswer with the option's letter from the given choices directly.",
                                             format="default"),
        "metadata": [{"version": 0.0}],
    },
    "textvqa_val": {
        "dataset_path": "lmms-lab/textvqa", "test_split": "validation", "output_type": "generate_until",
        "doc_to_visual": Function("textvqa.utils.textvqa_doc_to_visual"),
        "doc_to_text": Function("textvqa.utils.textvqa_doc_to_text"), "doc_to_target": "answer",
        "generation_kwargs": {"until": ["ASSISTANT:"]},
        "process_results": Function("textvqa.utils.textvqa_process_results"),
        "metric_list": [exact_match(), *scores("textvqa.utils", {"submission": "textvqa_aggregate_submissions"})],
        "lmms_eval_specific_kwargs": prompts(SHORT_ANSWER, ocr=False),
    },
    "gqa": {
        "dataset_path": "lmms-lab/GQA", "dataset_name": "testdev_balanced_instructions",
        "dataset_kwargs": {"token": True}, "test_split": "testdev", "output_type": "generate_until",
        "doc_to_visual": Function("gqa.utils.gqa_doc_to_visual"), "doc_to_text": Function("gqa.utils.gqa_doc_to_text"),
        "doc_to_target": "answer", "process_docs": Function("gqa.utils.gqa_process_docs"),
        "generation_kwargs": GREEDY_16, "metric_list": [exact_match()],
        "lmms_eval_specific_kwargs": prompts(SHORT_ANSWER), "metadata": [{"version": 0.0}],
    },
    "vqav2_val": {
        "dataset_path": "lmms-lab/VQAv2", "dataset_kwargs": {"token": True}, "test_split": "validation",
        "output_type": "generate_until", "doc_to_visual": Function("vqav2.utils.vqav2_doc_to_visual"),
        "doc_to_text": Function("vqav2.utils.vqav2_doc_to_text"), "doc_to_target": "answer",
        "generation_kwargs": {"max_new_tokens": 16}, "metric_list": [exact_match()],
        "process_results": Function("vqav2.utils.vqav2_process_results_val"),
        "lmms_eval_specific_kwargs": prompts(SHORT_ANSWER), "metadata": [{"version": 0.0}],
    },
}


def import_lmms_eval() -> None:
    """Import lmms-eval's evaluator, or say how to install it."""
    require_import("lmms_eval.evaluator", "lmms_eval", "eval lmms_eval (lmms-eval)")


def resolved(value: Any) -> Any:
    """A TASKS config with its Functions imported, copied (lmms-eval updates a task's dicts in place)."""
    if isinstance(value, Function):
        module, _, name = value.rpartition(".")
        return getattr(importlib.import_module(f"lmms_eval.tasks.{module}"), name)
    if isinstance(value, dict):
        return {key: resolved(item) for key, item in value.items()}
    if isinstance(value, list):
        return [resolved(item) for item in value]
    return value


def decoding(task: str, generation: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the `generate` settings, the strings an answer is cut at) of a task's generation kwargs."""
    if generation.get("do_sample") or (generation.get("temperature") or 0) > 0:
        raise UserError(f"eval lmms_eval: task {task} samples its answers (do_sample={generation.get('do_sample')}, "
                        f"temperature={generation.get('temperature')}), but models here decode greedily or by beam "
                        f"search; set the eval's gen_kwargs={{temperature: 0, do_sample: false}}")
    settings = {key: generation[key] for key in DECODING if generation.get(key) is not None}
    settings.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    until = generation.get("until") or []
    return settings, [until] if isinstance(until, str) else list(until)


def cut(answer: str, until: list[str]) -> str:
    """The answer up to the first of the stop strings."""
    for stop in until:
        if stop:
            answer = answer.split(stop)[0]
    return answer.strip()


def metrics_of(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """lmms-eval's results["results"] flattened, without its CLT stderrs: those are the stderr of each
    document's `score` field (POPE's 0/1 correctness, also under precision and F1; MME's per question,
    not its 0-200 category sums), not of the metric. The full results keep them."""
    kept = {task: {key: value for key, value in values.items()
                   if not key.partition(",")[0].endswith(("_stderr_clt", "_stderr_clustered"))}
            for task, values in results.items()}
    return flatten(kept)


def lmms_model(adapter: GeneratesFromImages, batch_size: int) -> Any:
    """The adapter as an lmms-eval model (an `lmms` subclass, defined here so that importing this
    module does not import lmms-eval)."""
    from lmms_eval.api.model import lmms

    class InMemoryModel(lmms):
        """Answers lmms-eval's generation requests with `adapter.generate`; `task_dict` (task ->
        split -> documents) is filled in by simple_evaluate."""

        def generate_until(self, requests: list[Any]) -> list[str]:
            answers = [""] * len(requests)
            # one task and one set of generation kwargs per batch, as lmms-eval's models group them
            groups: dict[str, list[int]] = {}
            for i, request in enumerate(requests):
                _, generation, _, _, task, _ = request.args
                groups.setdefault(json.dumps([task, generation], sort_keys=True, default=str), []).append(i)
            for indices in groups.values():
                _, generation, _, _, task, _ = requests[indices[0]].args
                settings, until = decoding(task, generation)
                for start in range(0, len(indices), batch_size):
                    chunk = indices[start : start + batch_size]
                    images = [self.image(*requests[i].args[2:]) for i in chunk]
                    prompts = [requests[i].args[0] for i in chunk]
                    for i, answer in zip(chunk, adapter.generate(images, prompts, **settings), strict=True):
                        answers[i] = cut(answer, until)
            return answers

        def image(self, doc_to_visual: Any, doc_id: int, task: str, split: str) -> Image.Image:
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            if len(visuals) != 1 or not isinstance(visuals[0], Image.Image):
                kinds = ", ".join(type(v).__name__ for v in visuals) or "none"
                raise UserError(f"eval lmms_eval: task {task} gives {len(visuals)} visuals ({kinds}) for document "
                                f"{doc_id}; only tasks of one image per question run here")
            return visuals[0]

        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            raise UserError(f"eval lmms_eval: task {requests[0].task_name} scores answers by log-likelihood, which "
                            f"is not implemented here; choose tasks answered by generation (output_type: "
                            f"generate_until)")

        def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
            raise UserError(f"eval lmms_eval: task {requests[0].task_name} is multi-round, which is not implemented "
                            f"here; choose single-round tasks (output_type: generate_until)")

    return InMemoryModel()


class LMMSEval(ReadsSplit):
    needs = (GeneratesFromImages,)

    def __init__(self, tasks: Names = ("mme", "pope", "scienceqa_img", "textvqa_val", "gqa"),
                 dataset_dirs: Mapping[str, str] | None = None, limit: int | float | None = None,
                 batch_size: Count = 1, gen_kwargs: Mapping[str, Any] | None = None, include_path: str | None = None,
                 include_defaults: bool = True, bootstrap_iters: NonNegativeInt = 100_000,
                 output_dir: str | None = None, seed: NonNegativeInt = 0):
        """`dataset_dirs`: task -> a folder `DatasetDict.save_to_disk` wrote (offline). `limit`: the
        first N documents of each task (a float < 1: that fraction; quick subsets only).
        `gen_kwargs` override every task's generation kwargs (e.g. max_new_tokens).
        `include_defaults=false` skips indexing lmms-eval's own task files (a source install's
        thousands) when only TASKS or include_path tasks run. `output_dir`: where tasks write
        submission files (None: lmms-eval's ./submissions)."""
        if not tasks:
            raise UserError("eval lmms_eval: give at least one task, e.g. tasks=[mme,pope]")
        import_lmms_eval()  # a missing install fails before any model loads
        self.tasks = list(tasks)
        self.dataset_dirs = {task: str(Path(path).expanduser()) for task, path in (dataset_dirs or {}).items()}
        unused = sorted(set(self.dataset_dirs) - set(self.tasks))
        if unused:
            raise UserError(f"eval lmms_eval: dataset_dirs names {', '.join(unused)}, not among tasks={self.tasks}; "
                            f"add the task or drop its folder")
        self.limit = limit
        self.batch_size = batch_size
        self.gen_kwargs = dict(gen_kwargs or {})
        self.include_path = include_path
        self.include_defaults = include_defaults
        self.bootstrap_iters = bootstrap_iters
        self.output_dir = output_dir
        self.seed = seed

    def read(self) -> tuple[Any, dict[str, Any]]:
        """(lmms-eval's TaskManager, task name -> its loaded ConfigurableTask)."""
        import_lmms_eval()
        from lmms_eval.tasks import TaskManager

        if self.include_path is not None and not Path(self.include_path).exists():
            raise UserError(f"eval lmms_eval: include_path {self.include_path!r} does not exist; give a folder of "
                            f"lmms-eval task YAML files")
        manager = TaskManager(include_path=self.include_path, include_defaults=self.include_defaults)
        return manager, {task: self.load(task, manager) for task in self.tasks}

    def config(self, task: str, manager: Any) -> dict[str, Any]:
        """The task's config: from lmms-eval's index or include_path, else from TASKS."""
        from lmms_eval.utils import load_yaml_config

        kind = manager.task_index.get(task, {}).get("type")
        if kind is None and task not in TASKS:
            raise UserError(f"eval lmms_eval: unknown task {task}; known without lmms-eval's task files: "
                            f"{', '.join(TASKS)}; include_path adds a folder of task YAMLs (lmms-eval's "
                            f"lmms_eval/tasks of a source checkout at v0.7 holds them all)")
        if kind is None:
            return resolved(TASKS[task])
        if kind != "task":
            raise UserError(f"eval lmms_eval: {task} is an lmms-eval {kind}, not a task; list its tasks instead")
        try:
            return load_yaml_config(manager.task_index[task]["yaml_path"], mode="full")
        except (ImportError, OSError) as err:
            raise UserError(f"eval lmms_eval: the config of task {task} does not load ({err}); the pip package of "
                            f"lmms-eval lacks the YAML files some tasks' code reads: install lmms-eval from a "
                            f"source checkout (pip install -e <lmms-eval clone>)") from err

    def load(self, task: str, manager: Any) -> Any:
        """The task with its dataset loaded (from dataset_dirs, the hub or the HF cache)."""
        from lmms_eval.api.task import ConfigurableTask

        config = {**self.config(task, manager), "task": task}
        if self.gen_kwargs:
            config["generation_kwargs"] = {**(config.get("generation_kwargs") or {}), **self.gen_kwargs}
        local = self.dataset_dirs.get(task)
        if local is not None:
            if not (Path(local) / "dataset_dict.json").is_file():
                raise UserError(f"eval lmms_eval: dataset_dirs.{task}={local} is not a folder written by "
                                f"DatasetDict.save_to_disk; on a machine with network, run python -c \"import "
                                f"datasets; datasets.load_dataset({config.get('dataset_path')!r}"
                                f"{', ' + repr(config['dataset_name']) if config.get('dataset_name') else ''})"
                                f".save_to_disk({local!r})\" and copy the folder here")
            config.update(dataset_path=local, dataset_kwargs={"load_from_disk": True})
        try:
            loaded = ConfigurableTask(config=config)
            docs = loaded.eval_docs
        except Exception as err:  # whatever the datasets library raises, the fix is the same
            cause = getattr(err, "last_attempt", None)  # lmms-eval retries the download (tenacity's RetryError)
            cause = cause.exception() if cause is not None else err
            where = f"dataset_dirs.{task}={local}" if local else f"{config.get('dataset_path')} (HF hub or cache)"
            raise UserError(f"eval lmms_eval: the dataset of task {task} could not be loaded from {where} "
                            f"({type(cause).__name__}: {cause}); run once with network and HF_HUB_OFFLINE=0 to fill "
                            f"the HF cache, or save it with DatasetDict.save_to_disk and give "
                            f"dataset_dirs.{task}=<folder> (docs/benchmarks.md, lmms-eval)") from err
        if len(docs) == 0:
            split = config.get("test_split") or config.get("validation_split")
            raise UserError(f"eval lmms_eval: task {task}'s split {split} has no documents; check its dataset")
        return loaded

    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        import lmms_eval.evaluator

        manager, tasks = self.evaluated
        lm = lmms_model(adapter, self.batch_size)
        # TextVQA's submission aggregation writes its file under the CLI's --output_path
        args = None if self.output_dir is None else SimpleNamespace(
            output_path=str(Path(self.output_dir).expanduser()), process_with_media=True)
        output = lmms_eval.evaluator.simple_evaluate(
            model=lm, tasks=list(tasks.values()), limit=self.limit, task_manager=manager,
            bootstrap_iters=self.bootstrap_iters, log_samples=False, cli_args=args, random_seed=self.seed,
            numpy_random_seed=self.seed, torch_random_seed=self.seed, fewshot_random_seed=self.seed,
        )
        # the whole results (every metric with its stderrs, the task configs) go into the record's
        # eval_info beside the flattened metrics
        self.info = {"results": json.loads(json.dumps({k: output.get(k) for k in FULL_RESULTS}, default=str))}
        return metrics_of(output["results"])
