"""Hugging Face interop: export a checkpoint as a ``LlamaForCausalLM`` directory, start a run from one.

- ``mapping``: how our parameter names and model shape correspond to Llama's (both directions);
- ``checkpoint_model``: the model tensors and shape of a committed checkpoint of any format,
  world size or parallelism, read in one process;
- ``export``: ``pyrecover export hf CHECKPOINT OUT_DIR`` (safetensors, config.json, tokenizer);
- ``pretrained``: ``training.init_from_hf``: the model shape from a Llama config.json, and the
  weights loaded into a fresh model.

See docs/architecture.md, "Hugging Face export and import".
"""
