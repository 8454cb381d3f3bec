"""Sample format, FOA math, 360° geometry, audio features, viewpoint sampling, shard reading, demo data."""
