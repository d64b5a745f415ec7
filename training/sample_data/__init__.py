"""Teller's bundled finance sample set (`finance_train.jsonl`, `finance_eval.jsonl`) and the
seeded generator that writes it: `python -m training.sample_data.generate_finance`."""
