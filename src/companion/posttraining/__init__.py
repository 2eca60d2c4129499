"""
* `tasks`  checkable instruction tasks: templates, held-out wordings, the verifier, a contamination check
* `chat`   the chat template, a chat tokenizer and its Hugging Face export, SFT examples, batches and loss
"""
