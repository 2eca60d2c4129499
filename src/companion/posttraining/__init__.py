"""Post-training (chapter 10): from a pre-trained model to an assistant.

* `preference`  sequence log-probabilities and the DPO loss (Rafailov et al. 2023)
* `grpo`        group-relative advantages, the GRPO clipped loss with a k3 KL penalty, and one GRPO step
"""
