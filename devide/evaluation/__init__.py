"""Zero-shot evaluation: metrics, grounding, subgroup gaps, reports."""
