"""Train the embedded default model: a small open_clip CLIP (models/arch/open_clip/digits_clip.json)
on scikit-learn's handwritten digits, captions from templates, and ship its weights.

Contrastive training with class-aware targets (several images of one class share captions, so
every same-class pair in a batch counts as a match), AdamW, seeded. About 30 s on 2 CPU cores.

    python scripts/train_digits_clip.py                # writes ecoflap_exp/models/weights/digits_clip.safetensors
    python scripts/train_digits_clip.py --epochs 10 --out /tmp/w.safetensors
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from ecoflap_exp.data.digits import captions_of, digits_split  # noqa: E402
from ecoflap_exp.evals.digits import DigitsEval  # noqa: E402
from ecoflap_exp.models.open_clip import OpenCLIPAdapter  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[1] / "ecoflap_exp" / "models" / "weights" / "digits_clip.safetensors"


def train(epochs: int, batch_size: int = 128, lr: float = 2e-3, seed: int = 0) -> OpenCLIPAdapter:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    adapter = OpenCLIPAdapter("digits_clip", init="random", seed=seed)
    model = adapter.model.train()
    images, labels = digits_split()["train"]
    pixels = torch.stack([adapter.preprocess(image.convert("RGB")) for image in images])
    targets_all = torch.tensor(labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * ((len(images) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    for _ in range(epochs):
        order = torch.randperm(len(images))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            texts = [rng.choice(captions_of(int(targets_all[j]))) for j in idx]
            image, text, scale = model(pixels[idx], adapter.tokenizer(texts))[:3]
            logits = scale * image @ text.t()
            same = (targets_all[idx, None] == targets_all[None, idx]).float()
            soft = same / same.sum(1, keepdim=True)
            image_to_text = (soft * logits.log_softmax(1)).sum(1).mean()
            text_to_image = (soft * logits.t().log_softmax(1)).sum(1).mean()
            loss = -(image_to_text + text_to_image) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    return adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    start = time.perf_counter()
    adapter = train(args.epochs, seed=args.seed)
    seconds = time.perf_counter() - start
    metrics = DigitsEval().evaluate(adapter)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in adapter.model.state_dict().items()}, args.out)
    print(f"trained {args.epochs} epochs in {seconds:.1f} s; test zero-shot acc {metrics['acc']:.2f}%, "
          f"TR@1 {metrics['tr@1']:.2f}, IR@1 {metrics['ir@1']:.2f}; wrote {args.out} "
          f"({args.out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
