//! `layers::Dropout2d`: whole channels dropped with probability p, survivors scaled by 1/(1−p),
//! identity in evaluation, reproducible from a seed. (PyTorch's RNG stream cannot be matched, so
//! there is no golden tensor; the semantics are checked directly.)

use candle_core::Var;
use layers::testing::det_tensor;
use layers::Dropout2d;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::*;

#[test]
fn dropout2d_drops_whole_channels_and_rescales() {
    let dev = device();
    let (b, c, h, w) = (8, 50, 3, 4);
    let x = Var::from_tensor(&(det_tensor(&[b, c, h, w], 5, 1.0, &dev).unwrap() + 2.0).unwrap())
        .unwrap();
    let d = Dropout2d::new(0.25);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let y = d.forward(&x, Some(&mut rng)).unwrap();
    let ratio = (&y / x.as_tensor())
        .unwrap()
        .reshape((b * c, h * w))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut dropped = 0;
    for ch in &ratio {
        let first = ch[0];
        assert!(first == 0.0 || (first - 1.0 / 0.75).abs() < 1e-6, "{first}");
        assert!(
            ch.iter().all(|&r| (r - first).abs() < 1e-6),
            "a channel was only partly dropped"
        );
        dropped += (first == 0.0) as usize;
    }
    // 400 Bernoulli(0.25) draws: mean 100, sd 8.7.
    assert!((60..140).contains(&dropped), "{dropped} of 400 dropped");
    // Gradient = the mask.
    let grads = y.sum_all().unwrap().backward().unwrap();
    let g = grad(&grads, &x)
        .reshape((b * c, h * w))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (gc, rc) in g.iter().zip(&ratio) {
        assert!((gc[0] - rc[0]).abs() < 1e-6);
    }
    // Same seed, same mask; no RNG (evaluation), identity.
    let again = d
        .forward(&x, Some(&mut ChaCha8Rng::seed_from_u64(3)))
        .unwrap();
    assert_eq!(layers::testing::rel_err(&again, &y).unwrap(), 0.0);
    let eval = d.forward(&x, None).unwrap();
    assert_eq!(layers::testing::rel_err(&eval, x.as_tensor()).unwrap(), 0.0);
}
