"""HASS (harmonized speculative sampling): EAGLE-2 at inference, a harmonized objective in training.

Sources: docs/reference.md §1.4 (HArmonizedSS/HASS@38922e4, arXiv 2408.15766). The draft network, the
dynamic tree (60/5/10), checkpoint loading (released HASS drafts have the EAGLE key layout, §1.3.5)
and export to vLLM/SGLang (§1.3.6) are EAGLE-2's, inherited unchanged from ``methods.eagle2``.
What differs is the loss (``methods/_eagle_train.py`` implements both parts):

- harmonized objective distillation: ``topk_w`` * top-K CE over the target's K=``topk`` most likely
  tokens, on top of EAGLE's regression and full soft CE;
- harmonized context alignment: ``passes`` = 3 forwards per batch, pass j attending to the draft's
  own features for the last j-1 positions as it will at tree depth j (a true causal softmax; the
  HASS code's multiply-mask quirk is not reproduced).

Checkpoints written by the trainer say method ``hass``. Training and ablations, one command each::

    python -m harness train --method hass --data DIR --out DIR            # full HASS (n=3, K=10, topk_w=1)
    python -m harness train --method hass --loss topk_w=0 ...             # without the top-K loss
    python -m harness train --method hass --loss passes=1 ...             # without context alignment (n=1)

The paper's two-stage schedule (40 + 10 epochs) is stage 1 with ``--loss topk_w=0``, then stage 2
starting from stage 1's weights with ``--init STAGE1_DIR --set lr=1e-5 --loss topk_w=1``.
"""
from __future__ import annotations

from harness.drafter import METHODS
from methods._eagle_train import EagleLoss
from methods.eagle2 import Eagle2


@METHODS.register("hass")
class Hass(Eagle2):
    summary = "HASS: EAGLE-2 with a draft trained by top-K distillation and context alignment (needs a checkpoint)"
    loss_defaults = EagleLoss(passes=3, topk_w=1.0, topk=10)
