"""Post-training (chapter 10): from a pre-trained model to an assistant.

* `tasks`       instruction tasks a program generates and checks, with wordings held out of training
* `chat`        the chat template (role markers, end of turn), its tokenizer and export, SFT loss masks
* `lora`        low-rank adapters: W' = W + (alpha / r) B A on frozen linear layers, merged for inference
* `preference`  sequence log-probabilities and the DPO loss (Rafailov et al. 2023)
* `grpo`        group-relative advantages, the GRPO clipped loss with a k3 KL penalty, and one GRPO step
"""
