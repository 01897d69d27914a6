"""DeepSpeed config templates (JSON); "auto" values are filled from the RunConfig by parallel/ds_config.py."""
