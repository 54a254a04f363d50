"""Image-instruction conversations in LLaVA's format, as llava_v1_5_mix665k.json (LLaVA-1.5's
instruction-tuning mixture) and its kin write them: a JSON list of
{"id", "image": "<path under the image folder>", "conversations": [{"from": "human"|"gpt",
"value": "..."}]}, the first human turn holding the `<image>` mark. Entries without an image (the
text-only ShareGPT part of the mixture) are skipped; paths are relative to `image_root` (LLaVA's
layout: coco/train2017/, gqa/images/, ocr_vqa/images/, textvqa/train_images/, vg/VG_100K/...).

The first `num_samples` conversations whose image decodes are used, or those of a seeded shuffle
(the mixture is ordered by source, so its first entries are all from one dataset).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ecoflap_exp.data.files import read_text
from ecoflap_exp.data.images import AnnotatedImageCalibration, Augment
from ecoflap_exp.errors import UserError
from ecoflap_exp.options import Count, Fraction, NonNegativeInt


def read_conversations(annotations: str, image_root: str | None = None
                       ) -> list[tuple[Path, tuple[tuple[str, str], ...]]]:
    """(image path, turns) of every entry with an image; turns are (role, text) pairs."""
    path = Path(annotations).expanduser()
    if not path.is_file():
        raise UserError(f"conversation file {annotations} does not exist; download LLaVA's llava_v1_5_mix665k.json "
                        f"(https://huggingface.co/datasets/liuhaotian/LLaVA-Instruct-150K) or point "
                        f"calib.annotations at a file of that shape")
    try:
        entries = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise UserError(f"conversation file {annotations} is not valid JSON ({err})") from err
    if not isinstance(entries, list):
        raise UserError(f"conversation file {annotations} must hold a JSON list of "
                        f"{{'image', 'conversations'}} entries (LLaVA's format)")
    root = Path(image_root).expanduser() if image_root else path.parent
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry:
            continue
        turns = entry.get("conversations")
        if not isinstance(turns, list) or not turns or not all(
                isinstance(t, dict) and t.get("from") in ("human", "gpt") and isinstance(t.get("value"), str)
                for t in turns):
            raise UserError(f"entry {i} (id {entry.get('id')!r}) of {annotations} has no list of "
                            f"{{'from': 'human'|'gpt', 'value': str}} turns under 'conversations'")
        out.append((root / entry["image"], tuple((t["from"], t["value"]) for t in turns)))
    if not out:
        raise UserError(f"conversation file {annotations} has no entry with an image")
    return out


class ConversationCalibration(AnnotatedImageCalibration):
    kind = "conversations"

    def __init__(self, annotations: str, num_samples: Count = 128, batch_size: Count = 8, seed: NonNegativeInt = 0,
                 shuffle: bool = True, max_bad_fraction: Fraction = 0.05, image_root: str | None = None,
                 augment: Augment = "eval"):
        super().__init__(annotations, num_samples, batch_size, seed, shuffle, max_bad_fraction, image_root, augment)

    def items(self) -> list[tuple[Path, Any]]:
        return read_conversations(self.annotations, self.image_root)
