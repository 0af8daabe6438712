//! The fused CPU kernels (LayerNorm, softmax, bias addition) against the composed candle-op
//! reference (`with_composed_ops`): forward values and gradients with respect to every input,
//! on several shapes, non-contiguous inputs and rows of length 1; then a whole ViT's gradients.

use backbone::ops::{add_bias, layer_norm, softmax_last_dim, with_composed_ops};
use backbone::{build_trainable, init::init_weights, TrainCtx, VitConfig};
use candle_core::{DType, Device, Result, Tensor, Var};
use rand::SeedableRng;

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a − b| relative to max |b| (floored so that all-zero references compare absolutely).
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).unwrap()) / max_abs(b).max(1e-3)
}

fn bit_identical(a: &Tensor, b: &Tensor) -> bool {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Output of `f(inputs)` and the gradients of Σ f(inputs) ⊙ r for a fixed random r, once through
/// the fused kernels and once through the composed reference.
fn both_paths(
    inputs: &[Tensor],
    f: impl Fn(&[&Tensor]) -> Result<Tensor>,
) -> [(Tensor, Vec<Tensor>); 2] {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let run = |composed: bool| {
        let build = || {
            let ts: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
            f(&ts).unwrap()
        };
        let y = if composed {
            with_composed_ops(build)
        } else {
            build()
        };
        let r = Tensor::randn(0f32, 1.0, y.shape(), &Device::Cpu).unwrap();
        (y, r)
    };
    let (y_fused, r) = run(false);
    let (y_comp, _) = run(true);
    let grads = |y: &Tensor| {
        let store = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        vars.iter()
            .map(|v| {
                store
                    .get(v.as_tensor())
                    .expect("gradient reaches every input")
                    .clone()
            })
            .collect::<Vec<_>>()
    };
    let g_fused = grads(&y_fused);
    let g_comp = grads(&y_comp);
    [(y_fused, g_fused), (y_comp, g_comp)]
}

fn assert_paths_agree(what: &str, inputs: &[Tensor], f: impl Fn(&[&Tensor]) -> Result<Tensor>) {
    let [(y_f, g_f), (y_c, g_c)] = both_paths(inputs, f);
    let e = rel_err(&y_f, &y_c);
    assert!(e < 1e-5, "{what}: forward rel err {e}");
    for (i, (a, b)) in g_f.iter().zip(&g_c).enumerate() {
        let e = rel_err(a, b);
        assert!(e < 1e-5, "{what}: gradient of input {i} rel err {e}");
        assert_eq!(
            a.dims(),
            inputs[i].dims(),
            "{what}: gradient shape of input {i}"
        );
    }
}

/// Seeded normal draws (a fixed sequence over the calls of a test), shifted by 0.3: tests must not
/// depend on the thread RNG, or a rare draw makes them flaky.
fn randn(shape: &[usize], scale: f32) -> Tensor {
    use rand_distr::Distribution;
    thread_local!(static CALL: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
    // one test per thread: the sequence restarts with each test
    let call = CALL.with(|c| {
        let k = c.get();
        c.set(k + 1);
        k
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED ^ call.wrapping_mul(0x9E37_79B9));
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rand_distr::StandardNormal.sample(&mut rng))
        .collect();
    (Tensor::from_vec(v, shape, &Device::Cpu).unwrap() * scale as f64)
        .unwrap()
        .affine(1.0, 0.3)
        .unwrap()
}

#[test]
fn layer_norm_matches_composed_forward_and_gradients() {
    // The last shapes span several rayon tasks, so the per-block weight/bias partial sums are
    // exercised; rows of length 1 normalise to exactly the bias.
    for shape in [
        vec![1, 1],
        vec![4, 1],
        vec![1, 7],
        vec![3, 5, 13],
        vec![2, 17, 128],
        vec![300, 128],
        vec![3, 37, 384],
    ] {
        let d = *shape.last().unwrap();
        let inputs = [randn(&shape, 2.0), randn(&[d], 1.0), randn(&[d], 1.0)];
        assert_paths_agree(&format!("layer_norm {shape:?}"), &inputs, |t| {
            layer_norm(t[0], t[1], t[2], 1e-6)
        });
    }
}

#[test]
fn layer_norm_of_non_contiguous_input() {
    let inputs = [
        randn(&[24, 3, 40], 1.0),
        randn(&[24], 1.0),
        randn(&[24], 1.0),
    ];
    assert_paths_agree("layer_norm transposed", &inputs, |t| {
        let x = t[0].transpose(0, 2)?; // [40, 3, 24], not contiguous
        assert!(!x.is_contiguous());
        layer_norm(&x, t[1], t[2], 1e-6)
    });
}

#[test]
fn softmax_matches_composed_forward_and_gradient() {
    for shape in [
        vec![1, 1],
        vec![6, 1],
        vec![2, 4, 5],
        vec![2, 3, 17, 17],
        vec![1, 6, 197, 197],
        vec![40, 999],
    ] {
        let inputs = [randn(&shape, 3.0)];
        assert_paths_agree(&format!("softmax {shape:?}"), &inputs, |t| {
            softmax_last_dim(t[0])
        });
    }
    let inputs = [randn(&[33, 2, 20], 3.0)];
    assert_paths_agree("softmax transposed", &inputs, |t| {
        let x = t[0].transpose(0, 2)?;
        assert!(!x.is_contiguous());
        softmax_last_dim(&x)
    });
}

#[test]
fn add_bias_matches_broadcast_add_forward_and_gradients() {
    for shape in [
        vec![1, 1],
        vec![5, 1],
        vec![5, 3],
        vec![2, 50, 384],
        vec![4000, 24],
    ] {
        let d = *shape.last().unwrap();
        let inputs = [randn(&shape, 1.0), randn(&[d], 1.0)];
        assert_paths_agree(&format!("add_bias {shape:?}"), &inputs, |t| {
            add_bias(t[0], t[1])
        });
    }
    let inputs = [randn(&[7, 30, 2], 1.0), randn(&[7], 1.0)];
    assert_paths_agree("add_bias transposed", &inputs, |t| {
        add_bias(&t[0].transpose(0, 2)?, t[1])
    });
}

#[test]
fn composed_override_is_scoped_and_restored_after_a_panic() {
    let x = randn(&[64, 128], 1.0);
    let w = randn(&[128], 1.0);
    let b = randn(&[128], 1.0);
    let xv = Var::from_tensor(&x).unwrap();
    let ln = |v: &Var| layer_norm(v.as_tensor(), &w, &b, 1e-6).unwrap();
    let fused = ln(&xv);
    let composed = with_composed_ops(|| ln(&xv));
    // Different summation orders: equal to rounding, not bit for bit, which shows that the two
    // calls really took different paths.
    assert!(rel_err(&fused, &composed) < 1e-5);
    assert!(!bit_identical(&fused, &composed));
    let _ = std::panic::catch_unwind(|| with_composed_ops(|| panic!("inside the override")));
    assert!(bit_identical(&ln(&xv), &fused), "fused path restored");
}

fn small_vit() -> VitConfig {
    VitConfig {
        embed_dim: 48,
        depth: 3,
        num_heads: 3,
        mlp_hidden: 192,
        patch_size: 4,
        img_size: 32,
        in_chans: 3,
        drop_path_rate: 0.2,
        masked_im_modeling: true,
    }
}

#[test]
fn vit_gradients_match_the_composed_path_for_every_weight() {
    let cfg = small_vit();
    let dev = Device::Cpu;
    let (varmap, model) =
        build_trainable(&cfg, init_weights(&cfg, 3).unwrap(), DType::F32, &dev).unwrap();
    let global = Tensor::randn(0f32, 1.0, (3, 3, 32, 32), &dev).unwrap();
    let local = Tensor::randn(0f32, 1.0, (4, 3, 16, 12), &dev).unwrap();
    let mask = Tensor::from_vec(
        (0..3 * 64)
            .map(|i| u8::from(i % 5 == 0))
            .collect::<Vec<_>>(),
        (3, 64),
        &dev,
    )
    .unwrap();
    let target = Tensor::randn(0f32, 1.0, (3, 65, 48), &dev).unwrap();
    let step = || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = model
            .forward_tokens(&global, Some(&mask), Some(&mut TrainCtx { rng: &mut rng }))
            .unwrap();
        let b = model
            .forward_tokens(&local, None, Some(&mut TrainCtx { rng: &mut rng }))
            .unwrap();
        let loss = ((&a * &target).unwrap().sum_all().unwrap()
            + b.sqr().unwrap().mean_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        (a, b, grads)
    };
    let (a_f, b_f, grads_f) = step();
    let (a_c, b_c, grads_c) = with_composed_ops(step);
    for (what, f, c) in [("global", &a_f, &a_c), ("local", &b_f, &b_c)] {
        let e = rel_err(f, c);
        assert!(e < 1e-5, "{what} tokens rel err {e}");
    }
    let data = varmap.data().lock().unwrap();
    assert_eq!(data.len(), cfg.expected_shapes().len());
    let mut any_bit_difference = false;
    for (name, var) in data.iter() {
        let gf = grads_f
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let gc = grads_c
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no reference"));
        assert!(max_abs(gc) > 0.0, "{name}: zero reference gradient");
        let e = max_abs(&(gf - gc).unwrap()) / max_abs(gc);
        assert!(e < 5e-5, "{name}: gradient rel err {e}");
        any_bit_difference |= !bit_identical(gf, gc);
    }
    assert!(any_bit_difference, "fused kernels were not used");
}

/// Linear layers through the fused op (GEMM + bias + GELU + per-sample factors, one backward)
/// against matmul + broadcast add + GELU + broadcast multiplication.
#[test]
fn linear_matches_composed_forward_and_gradients() {
    use backbone::ops::{linear, Activation};
    for (rows, k, n) in [
        (1, 1, 1),
        (6, 5, 3),
        (40, 24, 72),
        (394, 48, 144),
        (3, 384, 1152),
    ] {
        for act in [Activation::Identity, Activation::Gelu] {
            for scaled in [false, true] {
                let inputs = [
                    randn(&[rows, k], 1.0),
                    randn(&[n, k], 0.3),
                    randn(&[n], 1.0),
                ];
                // Rows grouped in samples of `per` rows; one sample dropped, others rescaled.
                let per = if rows % 2 == 0 { rows / 2 } else { rows };
                let factors: Vec<f32> = (0..rows / per)
                    .map(|i| if i == 0 { 1.0 / 0.8 } else { 0.0 })
                    .collect();
                let what = format!("linear {rows}x{k}->{n} {act:?} scaled={scaled}");
                assert_paths_agree(&what, &inputs, |t| {
                    let scale = scaled.then_some((&factors[..], per));
                    linear(t[0], t[1], t[2], act, scale, None)
                });
            }
        }
    }
    // A transposed (strided) input and weight are read in place.
    let inputs = [
        randn(&[24, 30], 1.0),
        randn(&[24, 16], 0.3),
        randn(&[16], 1.0),
    ];
    assert_paths_agree("linear transposed", &inputs, |t| {
        let x = t[0].t()?;
        assert!(!x.is_contiguous());
        let w = t[1].t()?; // [16, 24], strided
        linear(&x, &w, t[2], Activation::Gelu, None, None)
    });
    let inputs = [randn(&[30, 24], 1.0), randn(&[24, 16], 0.3)];
    assert_paths_agree("matmul_t", &inputs, |t| {
        backbone::ops::autocast_matmul_t(t[0], &t[1].t()?, None)
    });
}

/// qkv [B, T, 3·D] → heads → softmax(scale·q kᵀ) v → [B, T, D], composed from candle ops.
fn attention_reference(qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let (b, t, d3) = qkv.dims3()?;
    let (d, hd) = (d3 / 3, d3 / 3 / heads);
    let qkv = qkv
        .reshape((b, t, 3, heads, hd))?
        .permute((2, 0, 3, 1, 4))?;
    let q = qkv.get(0)?.contiguous()?;
    let k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    let attn = softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?;
    attn.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))
}

#[test]
fn fused_attention_matches_composed_forward_and_gradient() {
    use backbone::ops::fused_attention;
    for (b, t, heads, hd) in [
        (1, 1, 1, 2),
        (2, 5, 2, 4),
        (3, 17, 3, 16),
        (2, 197, 6, 64),
        (4, 37, 6, 64),
    ] {
        let scale = (hd as f64).powf(-0.5);
        let inputs = [randn(&[b, t, 3 * heads * hd], 1.5)];
        assert_paths_agree(
            &format!("attention b{b} t{t} h{heads} d{hd}"),
            &inputs,
            |x| match fused_attention(x[0], heads, scale, None)? {
                Some(out) => Ok(out),
                None => attention_reference(x[0], heads, scale),
            },
        );
    }
    // Inference (no gradient) takes the same kernels without keeping the probabilities.
    let x = randn(&[2, 50, 3 * 48], 1.0);
    let fused = fused_attention(&x, 3, 0.25, None).unwrap().unwrap();
    let reference = attention_reference(&x, 3, 0.25).unwrap();
    assert!(rel_err(&fused, &reference) < 1e-5);
}

/// Cosine similarity of two tensors' flattened values.
fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

fn round_bf16(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

/// bf16 compute (AMX where available): exactly the f32 product of bf16-rounded operands up to
/// summation order; gradients stay close to f32.
#[test]
fn bf16_linear_and_attention_multiply_rounded_operands() {
    use backbone::ops::{fused_attention, linear, Activation};
    eprintln!("AMX: {}", backbone::ops::amx_available());
    let x = randn(&[300, 96], 1.0);
    let w = randn(&[200, 96], 0.05);
    let b = randn(&[200], 1.0);
    let y16 = linear(&x, &w, &b, Activation::Identity, None, Some(DType::BF16)).unwrap();
    let y_ref = linear(
        &round_bf16(&x),
        &round_bf16(&w),
        &b,
        Activation::Identity,
        None,
        None,
    )
    .unwrap();
    assert!(rel_err(&y16, &y_ref) < 1e-5, "{}", rel_err(&y16, &y_ref));
    let y32 = linear(&x, &w, &b, Activation::Identity, None, None).unwrap();
    assert!(rel_err(&y16, &y32) > 1e-5, "bf16 rounding left no trace");
    let qkv = randn(&[2, 40, 3 * 64], 1.0);
    let a16 = fused_attention(&qkv, 2, 0.17, Some(DType::BF16))
        .unwrap()
        .unwrap();
    let a32 = fused_attention(&qkv, 2, 0.17, None).unwrap().unwrap();
    assert!(cosine(&a16, &a32) > 0.9999, "{}", cosine(&a16, &a32));
    // Gradients of every input through both ops, bf16 against f32.
    let vars: Vec<Var> = [x, w, b]
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let grads = |compute: Option<DType>| {
        let h = linear(
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
            Activation::Gelu,
            None,
            compute,
        )
        .unwrap();
        let h = h.narrow(1, 0, 192).unwrap().reshape((2, 150, 192)).unwrap();
        let a = fused_attention(&h, 2, 0.2, compute).unwrap().unwrap();
        let store = a.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        vars.iter()
            .map(|v| store.get(v.as_tensor()).unwrap().clone())
            .collect::<Vec<_>>()
    };
    let (g16, g32) = (grads(Some(DType::BF16)), grads(None));
    for (i, (a, b)) in g16.iter().zip(&g32).enumerate() {
        let c = cosine(a, b);
        assert!(c > 0.999, "gradient {i}: cosine {c}");
    }
}

#[test]
fn bf16_vit_gives_every_weight_a_gradient_close_to_f32() {
    let cfg = small_vit();
    let dev = Device::Cpu;
    let (varmap, model) =
        build_trainable(&cfg, init_weights(&cfg, 5).unwrap(), DType::F32, &dev).unwrap();
    let model16 = {
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        backbone::VisionTransformer::new(&cfg, vb)
            .unwrap()
            .with_compute_dtype(DType::BF16)
    };
    let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev).unwrap();
    let target = Tensor::randn(0f32, 1.0, (2, 65, 48), &dev).unwrap();
    let run = |m: &backbone::VisionTransformer| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let y = m
            .forward_tokens(&x, None, Some(&mut TrainCtx { rng: &mut rng }))
            .unwrap();
        let grads = (&y * &target)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        (y, grads)
    };
    let (y32, g32) = run(&model);
    let (y16, g16) = run(&model16);
    assert!(cosine(&y16, &y32) > 0.999, "{}", cosine(&y16, &y32));
    let data = varmap.data().lock().unwrap();
    for (name, var) in data.iter() {
        // Without a mask, masked_embed is unused: no gradient in either precision.
        let Some(b) = g32.get(var.as_tensor()) else {
            assert!(
                g16.get(var.as_tensor()).is_none(),
                "{name}: bf16-only gradient"
            );
            continue;
        };
        let a = g16
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no bf16 gradient"));
        assert!(max_abs(a) > 0.0, "{name}: zero bf16 gradient");
        let c = cosine(a, b);
        assert!(c > 0.99, "{name}: bf16 gradient cosine {c}");
    }
}
