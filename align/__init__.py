"""Everything that learns: reading features, reward models, pairs, DPO, adapters.

Filled by later issues; milestone 1 provides the `align` command group only.
"""
