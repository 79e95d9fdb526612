"""Entity vocabulary, definitions, report labeler and the LLM harmoniser."""
