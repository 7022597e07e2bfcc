"""Training: the toy GPT-2 trainer (:mod:`jetjax.training.toy`) and LoRA fine-tuning (:mod:`jetjax.training.lora`)."""
