"""Per-stage metrics (params, MACs, size, latency, mAP) and the compression report files."""
