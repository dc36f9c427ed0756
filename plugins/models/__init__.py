"""Model-family plugins (Llama, Mistral, BLOOM, ...): map Hugging Face configs and tensor names
onto the generic decoder in ``plugformer.core.model``."""
