//! Training: backbones, heads, ranking losses, optimisers and schedules (tch).
