"""What makes QLoRA training fast, one module each; every one also runs on CPU (the tests use
them with tiny models).

- `varlen_attention`: packed examples attend through flash attention's variable-length kernel
  (boundaries from `position_ids`), so no block-diagonal mask is built or stored.
- `fused_mlp` (kernels in `fused_mlp_kernels`): a 4-bit LoRA Falcon MLP as one autograd
  function with one elementwise kernel each way, the recipe's roundings; `fused_swiglu`
  (kernels in `fused_swiglu_kernels`) the same for Llama-family SwiGLU MLPs. What both share:
  `lora_4bit` (reading and running PEFT's LoRA over 4-bit layers) and `elementwise` (where
  Triton runs, the torch path's common steps).
- `chunked_loss`: cross-entropy over labelled positions only, in vocabulary-head chunks.
- `precision`: frozen weights kept in bf16; opt-in bf16 activations after layer norms.
- `memory_plan`: the micro-batch / gradient-checkpointing choice for a memory budget.
- `host_memory`: on CPU, freed activations go back to the operating system (glibc's mmap
  threshold), so a run's resident memory follows what its tensors hold.
"""
