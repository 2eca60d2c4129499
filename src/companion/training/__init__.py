"""Training (chapters 5-7, 9): the loop and everything it needs.

* `loop`        one optimisation step (schedule, clip, step) and the loop over in-memory batches
* `trainer`     the loop over a token stream: evaluation, accumulation, checkpoints, resume, DDP
* `schedule`    the learning-rate schedule (warm-up, then cosine decay)
* `evaluation`  validation loss on fixed batches or over a whole text
* `batching`    random contiguous windows of a token stream, with a resumable data position
* `objectives`  causal and masked language-modelling losses
* `optim`       AdamW and Muon parameter groups
* `checkpoint`  safetensors checkpoints written as one unit
* `history`     what a run measured, step by step
* `distributed` data parallelism under torchrun
* `finetune`    fine-tuning on labelled examples: freezing, dropout, the supervised loop
"""
