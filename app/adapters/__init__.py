"""The adapter registry: import (folder or zip), validation, versions, the default, hot loading.

Layout on disk, under `settings.models_dir / "adapters"`::

    registry.json            default adapter, current version per name, activation history
    NAME/VERSION/            adapter_config.json, adapter_model.safetensors, teller.json, README
    .staging/                uploads being checked; emptied whatever the outcome

Nothing here runs generation: `service.py` hands validated folders to the engine.
"""
