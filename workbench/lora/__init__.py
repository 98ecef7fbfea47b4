"""lora: the idea itself.

LoRAConfig, the layer and its variants (DoRA, PiSSA), choosing targets, injecting, counting,
adapter files in PEFT's format. Imports only util.
"""
