"""What a trained coded model does: `decoding` (early decoding, early exit, specialization, MACs),
`evaluation` (the report), `plots` (its figures)."""
