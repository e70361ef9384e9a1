"""hierarchical: a NumPyro model of LLM output-token counts pooled model -> family -> global."""
