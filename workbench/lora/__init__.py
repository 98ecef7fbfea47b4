"""lora: the idea itself.  Needs torch (and transformers' types), imports only util.

The leaves:     architectures (THE table of model families: roles, layer names, encoders),
                paths (block numbers, heads, replace_module), quant_facts (what the layer
                needs to know of a quantized base), config (LoRAConfig)
the layer:      layer (plain LoRA, read aloud), variants (DoRA, PiSSA as hooks it calls)
choosing:       roles (a role's layers in a model), targets (PEFT's target rules, layer groups)
verbs:          inject (add, merge, unmerge, remove), params (counting)
beside it:      adapters (PEFT's files), serving (several named adapters, ServingLayer),
                quantize (QLoRA bases: quantize, dequantize, their bytes), export (a merged model)
"""
