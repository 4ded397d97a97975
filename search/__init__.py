"""Platform-aware NAS and latency-aware compound scaling (LACS). Arrives with the search issues."""
