//! tasks/segmentation against mmseg 0.12 (goldens from tests/reference/segmentation_reference.py,
//! checked against the real mmseg 0.12.0 source) and its own guarantees on generated scenes.

mod goldens;
mod training;
