"""From records to token rows: loading and checking Alpaca records (`loading`), prompts with
masked labels (`encoding`), several examples packed into one row (`packing`)."""
