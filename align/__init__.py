"""Everything that learns: reading features, reward models, pairs, DPO, adapters."""
import os

from .offline import keep_offline

keep_offline()   # before any of align's modules loads a Hugging Face library
# transformers draws a bar for every model load and save ("Loading weights", three a
# night), noise in the job's log; training's own bar (align.dpo) does not use this switch.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
