"""Training: one loop for pretraining and fine-tuning (`train`), and the pieces it reads down:

    batch.py      what travels from loader to task: dict micro-batches, a task's `Needs`
    plan.py       which samples each step and rank sees (a pure function of seed and step)
    loader.py     decode and collate them (broken images, and samples without what the task
                  needs, skipped and counted) into the task's fields (tokens ...), optionally ahead
    tasks/        what is optimised: a task builds its model, says what it needs of the data and
                  turns micro-batches into losses (contrastive.py: CLIP / SigLIP, caption bank,
                  CJK student distillation; captioning.py)
    step.py       the contrastive forward/backward with feature-cached gradient accumulation
    caption_bank.py  every training caption's frozen text features, for a loss over all of them
    distill.py    the CJK student pulled onto the frozen English tower
    optim.py      AdamW with weight decay on matrices only
    schedule.py   warmup + cosine learning rate as a function of the step
    state.py      RNG state for exact resumes
    metrics_log.py  metrics.jsonl
"""

from visembed.train.loop import train

__all__ = ["train"]
