"""QLoRA fine-tuning: finance data in, a tested adapter package out.

Imports only `app.contract` and `app.engine.*` from the app, never the web layer.
"""
