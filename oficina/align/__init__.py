"""Changing what a model prefers, and what it knows from a bigger one — each a loss function and
a batch builder on the one training loop of ``oficina.tuning`` (``loop.train``):

- ``dpo``: Direct Preference Optimization on ``{"prompt", "chosen", "rejected"}`` pairs, full or
  with any weight-changing tuning method (LoRA, ...), on a base or an already tuned model.
- ``reward``: a reward model (a one-number sequence-scoring head) trained on the same pairs, and
  ``score`` to rank candidate answers with it.
- ``distill``: logit distillation from a teacher into a smaller student sharing its tokenizer.

``pairs`` reads, checks and encodes preference files; ``common`` opens the model and registers
the result with its lineage, as a tuning run does. Import from the modules::

    from oficina.align.dpo import DPOConfig, dpo
    from oficina.align.reward import reward, score
    from oficina.align.distill import DistillConfig, distill
"""
