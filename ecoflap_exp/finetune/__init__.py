"""Training after or during pruning (docs/ARCHITECTURE.md): masked fine-tuning with the pruning
masks fixed, and the ID paper's iterative pruning while fine-tuning (cubic schedule, Magnitude /
Taylor / PLATON scores, optionally times each matrix's intrinsic dimension), on HF accelerate."""
