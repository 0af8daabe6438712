//! Fused multi-head self-attention core for CPU f32 tensors, forward and backward.
//!
//! Input: the qkv Linear's output [B, T, 3·D] laid out [3][heads][head_dim] per token (timm/DINO);
//! output: softmax(scale · q kᵀ) v with the heads side by side, [B, T, D] — what the composed
//! path builds with a permute, three contiguous copies, two batched matmuls, a softmax and a
//! transpose copy. Here each (sample, head) is one rayon task running two strided GEMMs straight
//! on the qkv buffer and writing its head's columns of the output in place. Training keeps the
//! attention probabilities for the backward pass, which again runs per (sample, head): dv = pᵀ do,
//! dp = do vᵀ, the softmax backward ds = p ⊙ (dp − Σ p⊙dp), dq = scale · ds k, dk = scale · dsᵀ q,
//! written into one [B, T, 3·D] gradient.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fused::dot8;
use super::gemm::{matmul, MatMut, MatRef, Precision};
use super::linear::cpu_f32;
#[cfg(target_arch = "x86_64")]
use super::linear::scale_rows;
#[cfg(target_arch = "x86_64")]
use super::linear_gemm::{self, PackedWeights};
use super::softmax_rows_in_place;

pub(crate) struct AttentionOp {
    pub heads: usize,
    pub scale: f32,
    pub precision: Precision,
    /// Keep the probabilities [B, heads, T, T] for the backward pass.
    pub keep_probs: bool,
    probs: OnceLock<Vec<f32>>,
}

impl AttentionOp {
    pub fn new(heads: usize, scale: f32, precision: Precision, keep_probs: bool) -> Self {
        Self {
            heads,
            scale,
            precision,
            keep_probs,
            probs: OnceLock::new(),
        }
    }

    fn dims(&self, l: &Layout) -> Result<(usize, usize, usize, usize)> {
        let &[b, t, d3] = l.dims() else {
            candle_core::bail!("attention: expected qkv [B, T, 3·D], got {:?}", l.dims())
        };
        let h = self.heads;
        if h == 0 || d3 % (3 * h) != 0 {
            candle_core::bail!("attention: width {d3} is not 3 × {h} heads × head_dim")
        }
        Ok((b, t, d3 / 3, d3 / 3 / h))
    }
}

/// Raw pointer that may cross into rayon tasks writing disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: every task writes a disjoint set of elements (its own head's columns / probabilities).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// (A method, so that closures capture the whole Send wrapper, not its raw field.)
    #[inline(always)]
    fn add(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

simd_kernel! {
    fn softmax_grad_rows_in_place((p, ds, n): (&[f32], &mut [f32], usize)) {
        for (pr, dr) in p.chunks_exact(n).zip(ds.chunks_exact_mut(n)) {
            let s = dot8(pr, dr);
            for (d, p) in dr.iter_mut().zip(pr) {
                *d = p * (*d - s);
            }
        }
    }
}

/// Per-task scratch of the packed path: the keys' and the values' panels.
#[cfg(target_arch = "x86_64")]
type Panels = (PackedWeights, PackedWeights);
#[cfg(not(target_arch = "x86_64"))]
type Panels = ();

/// One (sample, head) on the packed-panel GEMM: p = softmax(scale · q kᵀ), o = p v.
///
/// # Safety
/// q, k, v must be valid t × hd views with column stride 1; p holds t × t values; o is a
/// t × hd destination nobody else writes during the call.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn head_packed(
    t: usize,
    hd: usize,
    q: MatRef,
    k: MatRef,
    v: MatRef,
    scale: f32,
    p: &mut [f32],
    o: MatMut,
    (keys, values): &mut Panels,
) {
    keys.repack(k, t, hd);
    let scores = MatMut::new(p, 0, t);
    let scale_segment = |_: usize, _: usize, seg: &mut [f32]| scale_rows((seg, scale));
    linear_gemm::linear_rows(0..t, q, keys, None, scores, &scale_segment);
    softmax_rows_in_place((&mut p[..], t));
    values.repack(v.t(), hd, t);
    linear_gemm::linear_rows(
        0..t,
        MatRef::new(p, 0, t, 1),
        values,
        None,
        o,
        &|_, _, _| {},
    );
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention-f32"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("attention: expected f32 storage")
        };
        let Some((o0, o1)) = layout.contiguous_offsets() else {
            candle_core::bail!("attention: qkv must be contiguous")
        };
        let qkv = &data[o0..o1];
        let (b, t, d, hd) = self.dims(layout)?;
        let h = self.heads;
        // Written whole: each (sample, head) task writes its t × head_dim block.
        let mut out: Vec<f32> = Vec::with_capacity(b * t * d);
        let mut probs = if self.keep_probs {
            vec![0f32; b * h * t * t]
        } else {
            Vec::new()
        };
        let out_ptr = SendPtr(out.as_mut_ptr());
        let probs_ptr = SendPtr(probs.as_mut_ptr());
        let keep = self.keep_probs;
        (0..b * h).into_par_iter().for_each_init(
            || {
                let scores = if keep { Vec::new() } else { vec![0f32; t * t] };
                (scores, Panels::default())
            },
            |(scratch, panels), task| {
                let (bi, hi) = (task / h, task % h);
                let base = bi * t * 3 * d + hi * hd;
                let q = MatRef::new(qkv, base, 3 * d, 1);
                let k = MatRef::new(qkv, base + d, 3 * d, 1);
                let v = MatRef::new(qkv, base + 2 * d, 3 * d, 1);
                // SAFETY: task (bi, hi) alone writes probabilities block `task` and the output
                // columns hi·hd..(hi+1)·hd of sample bi; the views lie inside qkv.
                unsafe {
                    let p: &mut [f32] = if keep {
                        std::slice::from_raw_parts_mut(probs_ptr.add(task * t * t), t * t)
                    } else {
                        &mut scratch[..]
                    };
                    let o = MatMut {
                        ptr: out_ptr.add(bi * t * d + hi * hd),
                        rs: d as isize,
                    };
                    #[cfg(target_arch = "x86_64")]
                    if self.precision == Precision::F32
                        && hd > 0
                        && t > 0
                        && linear_gemm::available()
                    {
                        head_packed(t, hd, q, k, v, self.scale, p, o, panels);
                        return;
                    }
                    matmul(
                        t,
                        t,
                        hd,
                        MatMut::new(p, 0, t),
                        false,
                        q,
                        k.t(),
                        self.scale,
                        self.precision,
                        1,
                    );
                    softmax_rows_in_place((&mut p[..], t));
                    matmul(
                        t,
                        hd,
                        t,
                        o,
                        false,
                        MatRef::new(p, 0, t, 1),
                        v,
                        1.0,
                        self.precision,
                        1,
                    );
                }
            },
        );
        // SAFETY: the b × heads tasks wrote every (token, column) of every sample.
        unsafe { out.set_len(b * t * d) };
        if keep {
            let _ = self.probs.set(probs);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, t, d))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let Some(probs) = self.probs.get() else {
            candle_core::bail!("attention backward: the forward pass kept no probabilities")
        };
        let grad = grad.contiguous()?;
        let (b, t, d3) = qkv.dims3()?;
        let (d, h) = (d3 / 3, self.heads);
        let hd = d / h;
        let mut dqkv = vec![0f32; b * t * d3];
        let dqkv_ptr = SendPtr(dqkv.as_mut_ptr());
        cpu_f32(&grad, |g, lg| {
            let g = &g[lg.start_offset()..lg.start_offset() + b * t * d];
            cpu_f32(qkv, |data, lq| {
                let Some((o0, o1)) = lq.contiguous_offsets() else {
                    candle_core::bail!("attention backward: qkv must be contiguous")
                };
                let qkv = &data[o0..o1];
                (0..b * h).into_par_iter().for_each_init(
                    || vec![0f32; t * t],
                    |ds, task| {
                        let (bi, hi) = (task / h, task % h);
                        let base = bi * t * d3 + hi * hd;
                        let q = MatRef::new(qkv, base, d3, 1);
                        let k = MatRef::new(qkv, base + d, d3, 1);
                        let v = MatRef::new(qkv, base + 2 * d, d3, 1);
                        let go = MatRef::new(g, bi * t * d + hi * hd, d, 1);
                        let p = &probs[task * t * t..(task + 1) * t * t];
                        let pv = MatRef::new(p, 0, t, 1);
                        let dst = |slot: usize| MatMut {
                            // Inside dqkv; each task owns its head's columns.
                            ptr: dqkv_ptr.add(base + slot * d),
                            rs: d3 as isize,
                        };
                        // SAFETY: as in the forward pass; ds is this task's scratch.
                        unsafe {
                            // dv = pᵀ · do
                            matmul(t, hd, t, dst(2), false, pv.t(), go, 1.0, self.precision, 1);
                            // dp = do · vᵀ, then the softmax backward in place.
                            matmul(
                                t,
                                t,
                                hd,
                                MatMut::new(ds, 0, t),
                                false,
                                go,
                                v.t(),
                                1.0,
                                self.precision,
                                1,
                            );
                            softmax_grad_rows_in_place((p, &mut ds[..], t));
                            let dsv = MatRef::new(ds, 0, t, 1);
                            // dq = scale · ds · k;  dk = scale · dsᵀ · q
                            matmul(
                                t,
                                hd,
                                t,
                                dst(0),
                                false,
                                dsv,
                                k,
                                self.scale,
                                self.precision,
                                1,
                            );
                            matmul(
                                t,
                                hd,
                                t,
                                dst(1),
                                false,
                                dsv.t(),
                                q,
                                self.scale,
                                self.precision,
                                1,
                            );
                        }
                    },
                );
                Ok(())
            })
        })?;
        Ok(Some(Tensor::from_vec(dqkv, (b, t, d3), qkv.device())?))
    }
}
