//! Semantic segmentation (mmseg 0.12 semantics).
