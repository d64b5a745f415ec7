"""The improvement loop: feedback on answers → datasets → training jobs → evaluation gate →
promote, with lineage back from any answer (docs/improvement-loop.md)."""
