//! COCO run-length masks, ported from pycocotools' `maskApi.c`: column-major runs starting with
//! background, the compressed string form, polygon rasterisation (`rleFrPoly`), area and bbox.

/// A binary mask of `height` x `width` as alternating background/foreground runs over the
/// column-major (Fortran-order) pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rle {
    pub height: u32,
    pub width: u32,
    pub counts: Vec<u32>,
}

impl Rle {
    /// Encodes a row-major 0/1 mask.
    pub fn from_mask(mask: &[u8], height: u32, width: u32) -> Rle {
        let (h, w) = (height as usize, width as usize);
        assert_eq!(mask.len(), h * w, "mask size must be height x width");
        let mut counts = Vec::new();
        let mut current = 0u8;
        let mut run = 0u32;
        for x in 0..w {
            for y in 0..h {
                let v = (mask[y * w + x] != 0) as u8;
                if v != current {
                    counts.push(run);
                    run = 0;
                    current = v;
                }
                run += 1;
            }
        }
        counts.push(run);
        Rle {
            height,
            width,
            counts,
        }
    }

    /// Decodes to a row-major 0/1 mask. Fails if the runs do not cover exactly h x w pixels.
    pub fn to_mask(&self) -> Result<Vec<u8>, String> {
        let (h, w) = (self.height as usize, self.width as usize);
        let total: u64 = self.counts.iter().map(|&c| c as u64).sum();
        if total != (h * w) as u64 {
            return Err(format!(
                "RLE counts sum to {total} but size is {h}x{w} = {}",
                h * w
            ));
        }
        let mut mask = vec![0u8; h * w];
        let mut pos = 0usize;
        for (i, &c) in self.counts.iter().enumerate() {
            if i % 2 == 1 {
                for p in pos..pos + c as usize {
                    let (x, y) = (p / h, p % h);
                    mask[y * w + x] = 1;
                }
            }
            pos += c as usize;
        }
        Ok(mask)
    }

    /// Foreground pixel count (`rleArea`).
    pub fn area(&self) -> u64 {
        self.counts
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&c| c as u64)
            .sum()
    }

    /// `[x, y, w, h]` of the foreground (`rleToBbox`), zeros when empty.
    pub fn bbox(&self) -> [f64; 4] {
        let h = self.height as u64;
        let m = self.counts.len() / 2 * 2;
        if m == 0 || h == 0 {
            return [0.0; 4];
        }
        let (mut xs, mut ys, mut xe, mut ye) = (self.width as u64, h, 0u64, 0u64);
        let mut cc = 0u64;
        let mut xp = 0u64;
        for j in 0..m {
            cc += self.counts[j] as u64;
            let t = cc - (j % 2) as u64;
            let y = t % h;
            let x = (t - y) / h;
            if j % 2 == 0 {
                xp = x;
            } else if xp < x {
                ys = 0;
                ye = h - 1;
            }
            xs = xs.min(x);
            xe = xe.max(x);
            ys = ys.min(y);
            ye = ye.max(y);
        }
        if xe < xs {
            return [0.0; 4];
        }
        [
            xs as f64,
            ys as f64,
            (xe - xs + 1) as f64,
            (ye - ys + 1) as f64,
        ]
    }

    /// pycocotools' compressed string (`rleToString`), including its `i > 2` delta quirk.
    pub fn to_compressed(&self) -> String {
        let mut s = Vec::new();
        for i in 0..self.counts.len() {
            let mut x = self.counts[i] as i64;
            if i > 2 {
                x -= self.counts[i - 2] as i64;
            }
            let mut more = true;
            while more {
                let mut c = (x & 0x1f) as u8;
                x >>= 5;
                more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    c |= 0x20;
                }
                s.push(c + 48);
            }
        }
        String::from_utf8(s).expect("RLE alphabet is ASCII")
    }

    /// Parses the compressed string (`rleFrString`).
    pub fn from_compressed(s: &str, height: u32, width: u32) -> Result<Rle, String> {
        let bytes = s.as_bytes();
        let mut counts: Vec<u32> = Vec::new();
        let mut p = 0;
        while p < bytes.len() {
            let mut x: i64 = 0;
            let mut k = 0;
            let mut more = true;
            while more {
                let b = *bytes
                    .get(p)
                    .ok_or_else(|| "RLE string ends inside a count".to_string())?;
                if !(48..48 + 64).contains(&b) {
                    return Err(format!("invalid character '{}' in RLE string", b as char));
                }
                let c = (b - 48) as i64;
                x |= (c & 0x1f) << (5 * k);
                more = c & 0x20 != 0;
                p += 1;
                k += 1;
                if !more && (c & 0x10) != 0 {
                    x |= -1i64 << (5 * k);
                }
                if k > 12 {
                    return Err("RLE count too long".into());
                }
            }
            let m = counts.len();
            if m > 2 {
                x += counts[m - 2] as i64;
            }
            if x < 0 || x > u32::MAX as i64 {
                return Err(format!("RLE count {x} out of range"));
            }
            counts.push(x as u32);
        }
        Ok(Rle {
            height,
            width,
            counts,
        })
    }

    /// Rasterises one polygon `[x1, y1, x2, y2, ...]` exactly as pycocotools' `rleFrPoly`.
    pub fn from_polygon(xy: &[f64], height: u32, width: u32) -> Rle {
        let (h, w) = (height as i64, width as i64);
        let k = xy.len() / 2;
        let scale = 5.0f64;
        let mut x: Vec<i64> = (0..k).map(|j| (scale * xy[2 * j] + 0.5) as i64).collect();
        let mut y: Vec<i64> = (0..k)
            .map(|j| (scale * xy[2 * j + 1] + 0.5) as i64)
            .collect();
        if k == 0 {
            return Rle {
                height,
                width,
                counts: vec![(h * w) as u32],
            };
        }
        x.push(x[0]);
        y.push(y[0]);
        let mut u = Vec::new();
        let mut v = Vec::new();
        for j in 0..k {
            let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
            let dx = (xe - xs).abs();
            let dy = (ys - ye).abs();
            let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
            if flip {
                std::mem::swap(&mut xs, &mut xe);
                std::mem::swap(&mut ys, &mut ye);
            }
            let s = if dx >= dy {
                if dx == 0 {
                    0.0
                } else {
                    (ye - ys) as f64 / dx as f64
                }
            } else {
                (xe - xs) as f64 / dy as f64
            };
            if dx >= dy {
                for d in 0..=dx {
                    let t = if flip { dx - d } else { d };
                    u.push(t + xs);
                    v.push((ys as f64 + s * t as f64 + 0.5) as i64);
                }
            } else {
                for d in 0..=dy {
                    let t = if flip { dy - d } else { d };
                    v.push(t + ys);
                    u.push((xs as f64 + s * t as f64 + 0.5) as i64);
                }
            }
        }
        let mut a: Vec<u64> = Vec::new();
        for j in 1..u.len() {
            if u[j] == u[j - 1] {
                continue;
            }
            let mut xd = (if u[j] < u[j - 1] { u[j] } else { u[j] - 1 }) as f64;
            xd = (xd + 0.5) / scale - 0.5;
            if xd.floor() != xd || xd < 0.0 || xd > (w - 1) as f64 {
                continue;
            }
            let mut yd = (if v[j] < v[j - 1] { v[j] } else { v[j - 1] }) as f64;
            yd = (yd + 0.5) / scale - 0.5;
            yd = yd.clamp(0.0, h as f64).ceil();
            a.push((xd as i64 * h + yd as i64) as u64);
        }
        a.push((h * w) as u64);
        a.sort_unstable();
        let mut prev = 0u64;
        for t in a.iter_mut() {
            let cur = *t;
            *t -= prev;
            prev = cur;
        }
        let mut b: Vec<u32> = Vec::with_capacity(a.len());
        let mut j = 0;
        b.push(a[j] as u32);
        j += 1;
        while j < a.len() {
            if a[j] > 0 {
                b.push(a[j] as u32);
                j += 1;
            } else {
                j += 1;
                if j < a.len() {
                    *b.last_mut().unwrap() += a[j] as u32;
                    j += 1;
                }
            }
        }
        Rle {
            height,
            width,
            counts: b,
        }
    }

    /// Union of several RLEs of the same size (`rleMerge` with intersect = 0), via masks.
    pub fn union(parts: &[Rle]) -> Option<Rle> {
        let first = parts.first()?;
        let mut mask = vec![0u8; (first.height * first.width) as usize];
        for p in parts {
            for (m, v) in mask.iter_mut().zip(p.to_mask().ok()?) {
                *m |= v;
            }
        }
        Some(Rle::from_mask(&mask, first.height, first.width))
    }
}
