//! Checkpoints are byte-reproducible and round-trip through the safetensors reader.

use candle_core::{DType, Device, Tensor};

#[test]
fn identical_contents_give_identical_bytes() {
    let dev = Device::Cpu;
    let a = Tensor::arange(0f32, 12.0, &dev)
        .unwrap()
        .reshape((3, 4))
        .unwrap();
    let b = Tensor::new(&[1u8, 2, 3], &dev).unwrap();
    let c = Tensor::new(&[0.5f32, -1.0], &dev)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let meta = |order: &[(&str, &str)]| -> Vec<(String, String)> {
        order
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let one = train::io::safetensors_bytes(
        [("w", &a), ("b", &b), ("c", &c)],
        meta(&[("x", "1"), ("format", "f"), ("a", "2")]),
    )
    .unwrap();
    let two = train::io::safetensors_bytes(
        [("c", &c), ("w", &a), ("b", &b)],
        meta(&[("a", "2"), ("x", "1"), ("format", "f")]),
    )
    .unwrap();
    assert_eq!(one, two);
    let st = safetensors::SafeTensors::deserialize(&one).unwrap();
    assert_eq!(st.names().len(), 3);
    let (_, m) = safetensors::SafeTensors::read_metadata(&one).unwrap();
    assert_eq!(m.metadata().as_ref().unwrap()["format"], "f");
    let back = candle_core::safetensors::load_buffer(&one, &dev).unwrap();
    assert_eq!(
        back["w"].to_vec2::<f32>().unwrap(),
        a.to_vec2::<f32>().unwrap()
    );
    assert_eq!(back["c"].dtype(), DType::BF16);
}
