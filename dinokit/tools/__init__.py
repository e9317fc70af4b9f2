"""Frozen-feature tools: extraction, visualisation, search, matching, heads, adapters, export."""
