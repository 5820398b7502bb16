"""What a run uses where the recipe says nothing: chosen so that a first run with no flags on a
small file learns it, and shown in the run's header.

The old defaults (1 epoch, LoRA lr 2e-4, r 8 on the attention q/v projections) made 4 optimizer
steps on 36 question/answer pairs with SmolLM2-135M and taught it 1 of 12 held-out paraphrases
(issue 11); ``tests/test_tuning_real.py`` runs the no-flags case on ``data/tune/tavrenna_small_*``.
What changed, and why:

* epochs follow the data: enough passes for ``MIN_STEPS`` optimizer steps (at most
  ``MAX_EPOCHS``), since a few steps at any sane rate move a model too little to learn
  anything; a large file still gets one pass;
* the learning rate depends on the method and the model's size: LoRA's papers use 1e-4..3e-4 on
  7B+ models, but a small model's low-rank update needs about ten times that (``Method.
  small_model_learning_rate``, below ``SMALL_MODEL`` parameters; the shipped Tavrenna recipe
  uses 2e-3 on SmolLM2 and learns 18 of 22 held-out facts);
* LoRA goes on every linear layer (``lora.LoraConfig``), as QLoRA does (Dettmers et al. 2023, §4:
  all-linear adapters are what match full fine-tuning), not only on q/v.

The price is the forgetting check's before → after perplexity on general text, which every run
reports: more steps at a higher rate move the model more.
"""

from __future__ import annotations

import math

MIN_STEPS = 30          # optimizer steps a run gets at least when the recipe sets no epochs
MAX_EPOCHS = 10         # ... but no more passes than this over a tiny file
SMALL_MODEL = 1_000_000_000  # parameters; below this a method's small-model rate applies


def epochs(steps_per_epoch: int) -> int:
    """Passes over the data for at least ``MIN_STEPS`` optimizer steps (1 for a big file)."""
    return max(1, min(MAX_EPOCHS, math.ceil(MIN_STEPS / max(1, steps_per_epoch))))


def learning_rate(method, parameters: int) -> tuple[float, str]:
    """(rate, why) for ``method`` on a model of ``parameters``, when the recipe gives none."""
    small = getattr(method, "small_model_learning_rate", None)
    if small is not None and parameters < SMALL_MODEL:
        return small, f"{method.name}'s default for models under {SMALL_MODEL / 1e9:g}B parameters"
    return method.learning_rate, f"{method.name}'s default"
