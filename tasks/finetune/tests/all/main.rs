//! tasks/finetune against PyTorch and its own guarantees: whole fine-tuning steps (BEiT full and
//! DeiT semi-supervised) vs tests/reference/finetune_reference.py, and the training loop's
//! learning, gradient coverage and exact resume on generated images.

mod step;
mod training;
