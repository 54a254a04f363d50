"""The papers' numbers and their tables' layouts: what ours are set beside (reference/ecoflap.md
section 6, reference/peers.md), under the same metric names as our records.

Derived columns (DERIVED) are computed where every input exists: ECoFLaP Table 1's "Macro Avg." is
the mean over the five tasks with NoCaps = mean(CIDEr, SPICE) and Flickr30k = mean(TR@1, IR@1)
(full model: (63.1 + 41.1 + 44.1 + 68.75 + 93.65) / 5 = 62.1); Table 2's average is the plain mean
of the 11 datasets. `prune_peak_gpu_gb` is the peak GPU memory of the pruning stages (Table 1's
memory column; the paper's "GB" is max_memory_allocated / 1024^2 / 1000, i.e. MiB / 1000, ours GiB).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: ECoFLaP Table 1 (BLIP-2 FlanT5-XL, zero-shot, 50%): the five tasks, as the blip2_paper suite names them
TABLE1_TASKS: tuple[tuple[str, ...], ...] = (("vqav2/accuracy",), ("okvqa/accuracy",), ("gqa/accuracy",),
                                             ("nocaps/cider", "nocaps/spice"), ("flickr30k/tr@1", "flickr30k/ir@1"))
#: ECoFLaP Table 2 (CLIP ViT-B/16 at 40%): CoOp's 11 datasets in the paper's column order
COOP_DATASETS = ("caltech101", "dtd", "eurosat", "fgvc_aircraft", "food101", "imagenet", "oxford_flowers",
                 "oxford_pets", "stanford_cars", "sun397", "ucf101")

#: derived metric -> its tasks; value = mean over tasks of the mean of each task's metrics
DERIVED: dict[str, tuple[tuple[str, ...], ...]] = {
    "macro_avg": TABLE1_TASKS,
    "avg/top1": tuple((f"{d}/top1",) for d in COOP_DATASETS),
}


def paper_cells(point: str, metrics: Iterable[str], values: Iterable[float | None]) -> dict[str, float]:
    return {f"{point}/{m}": v for m, v in zip(metrics, values, strict=True) if v is not None}


def curve(metric: str, by_sparsity: dict[float, float]) -> dict[str, float]:
    return {f"p{sparsity:g}/{metric}": v for sparsity, v in by_sparsity.items()}


TABLE1_METRICS = ("prune_peak_gpu_gb", *(m for task in TABLE1_TASKS for m in task), "macro_avg")
TABLE2_METRICS = (*(f"{d}/top1" for d in COOP_DATASETS), "avg/top1")

#: experiment -> method -> "p<sparsity>/<metric>" -> the paper's number (same metric names as our records)
PAPER: dict[str, dict[str, dict[str, float]]] = {
    "llama_wikitext": {  # LLaMA-7B, WikiText-2 perplexity, seqlen 2048 (Wanda and OWL READMEs)
        "dense": {"p0/wikitext2/ppl": 5.68},
        "wanda": {"p0.5/wikitext2/ppl": 7.26, "p0.7/wikitext2/ppl": 85.77},
        "sparsegpt": {"p0.5/wikitext2/ppl": 7.22, "p0.7/wikitext2/ppl": 26.30},
        "owl+wanda": {"p0.7/wikitext2/ppl": 24.55},
        "owl+sparsegpt": {"p0.7/wikitext2/ppl": 19.49},
    },
    # LLaMA-7B, WikiText-2 perplexity at 2048, 128 C4 windows. Sources: OWL's README results table (dense, 70%
    # rows; luuyin/OWL), Wanda's 50% rows as quoted by LLMPrune-BESA's README and locuslab/wanda issue #45, DSnoT's
    # Table 2 (on Wanda's mask) as quoted in zyxxmu/DSnoT issue #6. Not found in a primary source (docs/methods.md):
    # RIA, AlphaPruning and ECoFLaP on LLaMA, DSnoT at 50%, every 2:4 row.
    "methods_llama": {
        "dense": {"p0/wikitext2/ppl": 5.68},
        "wanda": {"p0.5/wikitext2/ppl": 7.26, "p0.7/wikitext2/ppl": 85.77},
        "sparsegpt": {"p0.5/wikitext2/ppl": 7.22, "p0.7/wikitext2/ppl": 26.30},
        "owl+wanda": {"p0.7/wikitext2/ppl": 24.55},
        "dsnot": {"p0.7/wikitext2/ppl": 62.05},
    },
    # LLaMA-2-7B, WikiText-2 perplexity at 4096 (Wanda's model.seqlen = max_position_embeddings; confirmed in
    # locuslab/wanda issue #47), 128 C4 windows: Wanda's README "Pruning LLaMA-2" table.
    "methods_llama2": {
        "dense": {"p0/wikitext2/ppl": 5.12},
        "wanda": {"p0.5/wikitext2/ppl": 6.42, "nm2:4/wikitext2/ppl": 11.02},
        "sparsegpt": {"p0.5/wikitext2/ppl": 6.51, "nm2:4/wikitext2/ppl": 10.17},
    },
    "table1_blip2": {  # ECoFLaP Table 1: memory GB, VQAv2, OK-VQA, GQA, NoCaps CIDEr/SPICE, Flickr30k TR@1/IR@1, macro
        "dense": paper_cells("p0", TABLE1_METRICS, (None, 63.1, 41.1, 44.1, 121.7, 15.8, 97.6, 89.7, 62.1)),
        "sparsegpt": paper_cells("p0.5", TABLE1_METRICS, (9.04, 57.4, 36.1, 40.8, 108.1, 14.1, 96.4, 86.3, 57.4)),
        "wanda": paper_cells("p0.5", TABLE1_METRICS, (8.87, 57.9, 35.3, 42.2, 106.9, 14.1, 95.1, 84.6, 57.2)),
        "ecoflap-first+wanda": paper_cells("p0.5", TABLE1_METRICS,
                                           (22.4, 59.4, 36.3, 42.3, 109.9, 14.2, 95.9, 86.2, 58.2)),
        "ecoflap-zeroth+wanda": paper_cells("p0.5", TABLE1_METRICS,
                                            (8.93, 58.4, 35.6, 42.9, 110.2, 14.3, 95.5, 85.8, 58.0)),
    },
    "fig4_blip2": {  # ECoFLaP Figure 4, BLIP-2 VQAv2 accuracy vs sparsity, read off the plot (approximate)
        "dense": {"p0/vqav2/accuracy": 63.1},
        "wanda": curve("vqav2/accuracy", {0.2: 63.0, 0.4: 61.4, 0.5: 57.9, 0.6: 45.9}),
        "ecoflap-first+wanda": curve("vqav2/accuracy", {0.2: 63.1, 0.4: 61.4, 0.5: 59.4, 0.6: 50.3}),
        "ecoflap-zeroth+wanda": curve("vqav2/accuracy", {0.2: 63.1, 0.4: 61.5, 0.5: 58.4, 0.6: 50.3}),
    },
    "table2_clip": {  # ECoFLaP Table 2: CLIP ViT-B/16 zero-shot top-1 at 40%, 11 CoOp datasets and their mean
        "dense": paper_cells("p0", TABLE2_METRICS,
                             (92.9, 44.5, 47.8, 24.8, 86.1, 66.7, 71.3, 89.1, 65.3, 62.6, 66.8, 65.3)),
        "wanda": paper_cells("p0.4", TABLE2_METRICS,
                             (85.1, 31.2, 33.5, 9.0, 66.0, 45.6, 37.2, 71.3, 35.0, 50.8, 54.7, 47.2)),
        "sparsegpt": paper_cells("p0.4", TABLE2_METRICS,
                                 (90.5, 41.5, 47.4, 19.2, 79.4, 50.8, 59.0, 86.4, 53.4, 55.3, 63.2, 58.7)),
        "ecoflap-zeroth+wanda": paper_cells("p0.4", TABLE2_METRICS,
                                            (87.5, 37.9, 43.8, 16.0, 72.8, 53.5, 57.0, 80.3, 46.9, 58.2, 62.4, 56.0)),
        "ecoflap-zeroth+sparsegpt": paper_cells(
            "p0.4", TABLE2_METRICS, (90.0, 42.4, 45.4, 22.5, 81.2, 56.5, 64.1, 88.3, 56.8, 60.2, 63.4, 61.0)),
    },
}


@dataclass(frozen=True)
class Layout:
    """How one experiment's table follows its paper artefact."""

    columns: tuple[tuple[str, str], ...] = ()  # (metric, the paper's column label), in the paper's order
    rows: tuple[str, ...] = ()                 # methods in the paper's order (others follow, sorted)
    row_keys: tuple[str, ...] = ()             # config keys that split one method into rows (ablations)
    per_tower: bool = False                    # add each tower's achieved sparsity and mean ID as metrics
    paper_label: str = "paper"
    note: str = ""

    def row_order(self, method: str) -> tuple[int, str]:
        """The paper's order, then dense, then the rest by name."""
        return (self.rows.index(method) if method in self.rows else len(self.rows) + (method != "dense"), method)


TABLE1_LABELS = ("Mem. (GB)", "VQAv2", "OK-VQA", "GQA", "NoCaps CIDEr", "NoCaps SPICE", "Flickr30k TR@1",
                 "Flickr30k IR@1", "Macro Avg.")
TABLE2_LABELS = ("Caltech101", "DTD", "EuroSAT", "FGVCAircraft", "Food101", "ImageNet", "OxfordFlowers",
                 "OxfordPets", "StanfordCars", "SUN397", "UCF101", "Avg.")
LAYOUTS: dict[str, Layout] = {
    "table1_blip2": Layout(
        columns=tuple(zip(TABLE1_METRICS, TABLE1_LABELS, strict=True)),
        rows=("dense", "sparsegpt", "wanda", "ecoflap-first+wanda", "ecoflap-zeroth+wanda"),
        note="ECoFLaP Table 1: BLIP-2 FlanT5-XL, zero-shot, 50% sparsity. Mem. = peak GPU memory of the pruning "
             "job (paper: MiB/1000, ours: GiB). Macro Avg. = mean of VQAv2, OK-VQA, GQA, mean(CIDEr, SPICE), "
             "mean(TR@1, IR@1)."),
    "fig4_blip2": Layout(
        columns=(("vqav2/accuracy", "VQAv2"),), rows=("dense", "wanda", "ecoflap-first+wanda", "ecoflap-zeroth+wanda"),
        paper_label="paper, read off the plot",
        note="ECoFLaP Figure 4 (BLIP-2 VQAv2 vs sparsity); the paper rows are read off the plot (approximate)."),
    "table2_clip": Layout(
        columns=tuple(zip(TABLE2_METRICS, TABLE2_LABELS, strict=True)),
        rows=("dense", "wanda", "sparsegpt", "ecoflap-zeroth+wanda", "ecoflap-zeroth+sparsegpt"),
        note="ECoFLaP Table 2: CLIP ViT-B/16 zero-shot top-1 at 40% sparsity, each dataset pruned with its own "
             "train split. Avg. = mean of the 11 datasets."),
    "id_asymmetry": Layout(row_keys=("model.prune_towers",), per_tower=True,
                           note="Vision vs language prunability (ID paper): each method on one tower group at a "
                                "time or on all; sparsity is of the pruned towers' weights. sparsity/<tower>: the "
                                "sparsity the method gave each tower; mean_id/<tower>: its mean per-matrix ID."),
    "id_asymmetry_clip": Layout(row_keys=("model.prune_towers",), per_tower=True,
                                note="Vision vs language prunability (ID paper) on CLIP; columns as id_asymmetry."),
    "zeroth_ablation": Layout(row_keys=("scorer.eps", "scorer.num_samples"),
                              note="Zeroth-order hyperparameters: perturbation size eps x number of samples."),
}
