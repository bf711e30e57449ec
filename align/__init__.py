"""Everything that learns: reading features, reward models, pairs, DPO, adapters."""
from .offline import keep_offline

keep_offline()   # before any of align's modules loads a Hugging Face library
