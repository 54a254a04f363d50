"""EleutherAI lm-evaluation-harness tasks on the in-memory (pruned) causal LM, through its Python
API: `lm_eval.simple_evaluate` on `HFLM(pretrained=<the nn.Module>, tokenizer=...)`, so nothing
is saved first (torchtune's way).

Wanda's zero-shot table uses boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge and
openbookqa with 0 shots (configs/eval/lm_eval.yaml). lm-eval loads each task's dataset from the
Hugging Face hub (or the HF datasets cache); `include_path` adds task YAMLs of one's own, e.g. a
task on local JSON lines (`dataset_path: json`, `dataset_kwargs: {data_files: ...}`).

Metrics are flattened to floats as "<task>/<metric>" (lm-eval's "acc,none" -> "acc", another
filter than "none" is appended: "exact_match_strict-match"); stderr values are kept where lm-eval
computed them. lm-eval's `wikitext` task is a different protocol from our WikiText-2 perplexity
(document-level rolling windows, word/byte perplexity): never compare the two.

Special tokens: lm-eval encodes context and context+continuation with the tokenizer's defaults
and splits at the context's length, which is right for tokenizers that put a BOS first (LLaMA,
OPT) and wrong for ones that append an EOS (ByT5's byte tokenizer of the tiny models: the EOS
would land between context and continuation). We pass `add_bos_token` = whether the tokenizer's
default encoding starts with its BOS token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.base import Evaluation
from ecoflap_exp.extras import require_import
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.capabilities import TokenLogits
from ecoflap_exp.options import Count, Names, NonNegativeInt

#: the parts of simple_evaluate's output kept whole (not the samples, nor the model objects)
FULL_RESULTS = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                "n-samples")


def import_harness() -> None:
    """Import lm-eval and its Hugging Face model wrapper, or say how to install them."""
    require_import("lm_eval.models.huggingface", "lm_eval", "eval lm_eval (lm-evaluation-harness)")


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer's default encoding starts with its BOS token."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a").input_ids
    return bos is not None and len(ids) > 0 and ids[0] == bos


def flatten(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """lm-eval's results["results"] -> {"<task>/<metric>": value} for every numeric metric."""
    metrics = {}
    for task, values in results.items():
        for key, value in values.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, int | float):
                continue  # "alias", "name", "sample_len", and "N/A" stderrs
            metric, _, filter_name = key.partition(",")
            metrics[f"{task}/{metric}" if filter_name == "none" else f"{task}/{metric}_{filter_name}"] = float(value)
    return metrics


class LMEvalHarness(Evaluation):
    needs = (TokenLogits,)

    def __init__(self, tasks: Names, num_fewshot: NonNegativeInt | None = 0, limit: int | float | None = None,
                 batch_size: Count | str = 1, include_path: str | None = None, include_defaults: bool = True,
                 bootstrap_iters: NonNegativeInt = 100_000, seed: NonNegativeInt = 0):
        """`limit`: the first N documents of each task (a float < 1: that fraction; quick subsets
        only). `include_defaults=false` skips indexing lm-eval's own ~14k task files (about 4 s) when
        only `include_path` tasks are run."""
        if not tasks:
            raise UserError("eval lm_eval: give at least one task, e.g. tasks=[hellaswag,arc_easy]")
        import_harness()  # a missing install fails before any model loads
        self.tasks = list(tasks)
        self.num_fewshot = num_fewshot
        self.limit = limit
        self.batch_size = batch_size
        self.include_path = include_path
        self.include_defaults = include_defaults
        self.bootstrap_iters = bootstrap_iters
        self.seed = seed

    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        import_harness()
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        model, tokenizer = adapter.transformers_lm()
        if self.include_path is not None and not Path(self.include_path).exists():
            raise UserError(f"eval lm_eval: include_path {self.include_path!r} does not exist; give a folder of "
                            f"lm-eval task YAML files")
        manager = TaskManager(include_path=self.include_path, include_defaults=self.include_defaults)
        unknown = [t for t in self.tasks if t not in manager.all_tasks and not Path(t).is_file()]
        if unknown:
            raise UserError(f"eval lm_eval: unknown task(s) {', '.join(unknown)}; `lm-eval ls tasks` lists lm-eval's "
                            f"own, and include_path adds a folder of task YAMLs")
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size,
                  add_bos_token=adds_bos(tokenizer))
        try:
            output = lm_eval.simple_evaluate(
                model=lm, tasks=self.tasks, num_fewshot=self.num_fewshot, limit=self.limit,
                task_manager=manager, bootstrap_iters=self.bootstrap_iters, log_samples=False,
                random_seed=self.seed, numpy_random_seed=self.seed, torch_random_seed=self.seed,
                fewshot_random_seed=self.seed,
            )
        except (ConnectionError, FileNotFoundError) as err:
            raise UserError(f"eval lm_eval: a task's dataset could not be loaded ({type(err).__name__}: {err}). "
                            f"lm-eval reads task datasets from the Hugging Face hub: run once with network and "
                            f"HF_HUB_OFFLINE=0 to fill the datasets cache, or point a task YAML in include_path at "
                            f"local files") from err
        # the harness's whole results (every metric with its stderr, n-shot, versions, config) go
        # into the record's eval_info beside the flattened metrics
        self.info = {"results": json.loads(json.dumps({k: output.get(k) for k in FULL_RESULTS}, default=str))}
        return flatten(output["results"])
