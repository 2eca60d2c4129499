"""Post-training (chapter 10): from a pre-trained model to an assistant.

* `lora`        low-rank adapters: W' = W + (alpha / r) B A on frozen linear layers, merged for inference
* `preference`  sequence log-probabilities and the DPO loss (Rafailov et al. 2023)
* `grpo`        group-relative advantages, the GRPO clipped loss with a k3 KL penalty, and one GRPO step
"""
