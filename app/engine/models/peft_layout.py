"""What the lean forwards (`fast_llama`, `fast_falcon`) need to know about a PEFT wrapper.

Both read the base weights and LoRA factors themselves instead of running PEFT's modules, so
both must refuse adapters whose maths they do not reproduce.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


def base_model(model: Any) -> Any:
    """The transformers model under a PEFT wrapper, or the model itself."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def adapter_reason(model: Any, projections: Collection[str]) -> str | None:
    """Why the loaded adapters cannot run as plain unmerged LoRA on `projections`, or None.

    Refused: DoRA (a magnitude vector per weight), extra trained modules, LoRA on any other
    module, and merged or embedding LoRA.
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        return None
    for name, config in model.peft_config.items():
        if getattr(config, "use_dora", False):
            return f"adapter {name} uses DoRA"
        if getattr(config, "modules_to_save", None):
            return f"adapter {name} trains extra modules"
    for module_name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if module_name.rsplit(".", 1)[-1] not in projections:
            return f"LoRA on {module_name}"
        if module.lora_embedding_A or module.merged_adapters:
            return f"merged or embedding LoRA on {module_name}"
    return None
