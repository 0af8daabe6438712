//! bf16 GEMM on Intel AMX tiles (`TDPBF16PS`: 16×16 f32 accumulators, 16×32 bf16 operands).
//!
//! Detected at run time: CPUID (AMX-TILE, AMX-BF16), the OS's XCR0 tile state bits and, on
//! Linux, the per-process permission for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`),
//! then a one-tile self-test. Stable Rust has no AMX intrinsics, so the few instructions are
//! inline assembly. Anything else (other CPUs or OSes, a refused permission, `IBOT_NO_AMX` set)
//! makes [`available`] false and the caller uses the f32 fallback.
//!
//! Operands are packed once per GEMM, rounded to bf16 (nearest even): A into 16-row × 32-k tiles,
//! B into the pair-interleaved ("VNNI") 16-k-pair × 16-column tiles that `TDPBF16PS` reads. The
//! kernel keeps a 32×32 block of C in four tile registers over the whole k loop.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::gemm::{bf16_bits, MatMut, MatRef};

/// Whether bf16 GEMMs run on AMX in this process (decided once).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid_count, _xgetbv};
    if std::env::var_os("IBOT_NO_AMX").is_some_and(|v| !v.is_empty() && v != "0") {
        return false;
    }
    // SAFETY: CPUID exists on every x86-64 CPU; XGETBV is only run when CPUID reports OSXSAVE.
    unsafe {
        if __cpuid_count(0, 0).eax < 7 {
            return false;
        }
        if __cpuid_count(1, 0).ecx & (1 << 27) == 0 {
            return false;
        }
        let edx = __cpuid_count(7, 0).edx;
        let (amx_bf16, amx_tile) = (edx & (1 << 22) != 0, edx & (1 << 24) != 0);
        if !amx_bf16 || !amx_tile {
            return false;
        }
        // XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS saves tile state.
        if (_xgetbv(0) >> 17) & 3 != 3 {
            return false;
        }
        // arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18): process-wide.
        let ret: i64;
        std::arch::asm!(
            "syscall",
            inlateout("rax") 158i64 => ret,
            in("rdi") 0x1023i64,
            in("rsi") 18i64,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
        if ret != 0 {
            return false;
        }
    }
    self_test()
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// One 32×32×64 product against the exact result (small integers are exact in bf16 and f32).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn self_test() -> bool {
    let (m, n, k) = (32, 32, 64);
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 3) % 7) as f32 - 3.0).collect();
    let mut c = vec![0f32; m * n];
    // SAFETY: the views cover exactly the buffers above.
    unsafe {
        gemm_bf16(
            m,
            n,
            k,
            MatMut::new(&mut c, 0, n),
            false,
            MatRef::new(&a, 0, k, 1),
            MatRef::new(&b, 0, n, 1),
            1.0,
            1,
        )
    };
    (0..m).all(|i| {
        (0..n).all(|j| {
            let want: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            c[i * n + j] == want
        })
    })
}

/// Elements of one packed tile (16 rows × 64 bytes of bf16).
const TILE: usize = 512;

#[repr(C, align(64))]
struct TileConfig([u8; 64]);

/// Palette 1, all eight tiles 16 rows × 64 bytes.
static CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    TileConfig(c)
};

/// C[32×32] (row stride 32 f32) = Σ over `kt` k-tiles of A rows [a0 | a1] · B columns [b0 | b1].
///
/// # Safety
/// AMX must be [`available`] and the tile configuration loaded on this thread; each operand
/// pointer must cover `kt` consecutive packed tiles and `c` 32×32 floats.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
unsafe fn kernel_2x2(
    kt: usize,
    a0: *const u16,
    a1: *const u16,
    b0: *const u16,
    b1: *const u16,
    c: *mut f32,
) {
    std::arch::asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        "2:",
        "tileloadd tmm4, [{a0} + {s64}*1]",
        "tileloadd tmm6, [{b0} + {s64}*1]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tileloadd tmm7, [{b1} + {s64}*1]",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tileloadd tmm5, [{a1} + {s64}*1]",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        "add {a0}, 1024",
        "add {a1}, 1024",
        "add {b0}, 1024",
        "add {b1}, 1024",
        "dec {kt}",
        "jnz 2b",
        "tilestored [{c} + {s128}*1], tmm0",
        "add {c}, 64",
        "tilestored [{c} + {s128}*1], tmm1",
        "add {c}, 2048 - 64",
        "tilestored [{c} + {s128}*1], tmm2",
        "add {c}, 64",
        "tilestored [{c} + {s128}*1], tmm3",
        kt = inout(reg) kt => _,
        a0 = inout(reg) a0 => _,
        a1 = inout(reg) a1 => _,
        b0 = inout(reg) b0 => _,
        b1 = inout(reg) b1 => _,
        c = inout(reg) c => _,
        s64 = in(reg) 64usize,
        s128 = in(reg) 128usize,
        options(nostack),
    );
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_2x2(
    _: usize,
    _: *const u16,
    _: *const u16,
    _: *const u16,
    _: *const u16,
    _: *mut f32,
) {
    unreachable!("AMX is only detected on x86-64")
}

#[cfg(target_arch = "x86_64")]
unsafe fn load_config() {
    std::arch::asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
}

#[cfg(target_arch = "x86_64")]
unsafe fn release_tiles() {
    std::arch::asm!("tilerelease", options(nostack, nomem));
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn load_config() {}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn release_tiles() {}

/// Packs rows × cols of `a` into 16-row × 32-column bf16 tiles, `[row tile][col tile][16][32]`,
/// `tiles` already zeroed (the padding stays 0). `kt` = column tiles.
unsafe fn pack_a_tile_row(
    a: MatRef,
    rows: usize,
    cols: usize,
    mi: usize,
    kt: usize,
    out: &mut [u16],
) {
    let r0 = mi * 16;
    let nr = rows.saturating_sub(r0).min(16);
    if a.cs == 1 {
        for rr in 0..nr {
            let src = std::slice::from_raw_parts(a.ptr.offset((r0 + rr) as isize * a.rs), cols);
            for (t, chunk) in src.chunks(32).enumerate() {
                let dst = &mut out[t * TILE + rr * 32..][..chunk.len()];
                for (d, s) in dst.iter_mut().zip(chunk) {
                    *d = bf16_bits(*s);
                }
            }
        }
    } else {
        for p in 0..cols {
            let (t, cc) = (p / 32, p % 32);
            let tile = &mut out[t * TILE..][..TILE];
            for rr in 0..nr {
                tile[rr * 32 + cc] = bf16_bits(a.at(r0 + rr, p));
            }
        }
    }
    debug_assert!(kt * 32 >= cols);
}

/// Packs `b` (k × n) column tile `nj` into pair-interleaved tiles `[k tile][16 pairs][16 cols][2]`.
unsafe fn pack_b_tile_col(b: MatRef, k: usize, n: usize, nj: usize, out: &mut [u16]) {
    let c0 = nj * 16;
    let nc = n.saturating_sub(c0).min(16);
    if b.cs == 1 {
        for p in 0..k {
            let (t, r, e) = (p / 32, (p % 32) / 2, p % 2);
            let src = std::slice::from_raw_parts(b.ptr.offset(p as isize * b.rs + c0 as isize), nc);
            let dst = &mut out[t * TILE + r * 32..][..32];
            for (c, s) in src.iter().enumerate() {
                dst[2 * c + e] = bf16_bits(*s);
            }
        }
    } else {
        for c in 0..nc {
            for p in 0..k {
                let (t, r, e) = (p / 32, (p % 32) / 2, p % 2);
                out[t * TILE + r * 32 + 2 * c + e] = bf16_bits(b.at(p, c0 + c));
            }
        }
    }
}

/// `dst[m×n] := (accumulate ? dst : 0) + scale · a · b` with bf16-rounded operands on AMX.
///
/// # Safety
/// As [`super::gemm::matmul`], and AMX must be [`available`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_bf16(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    accumulate: bool,
    a: MatRef,
    b: MatRef,
    scale: f32,
    threads: usize,
) {
    let kt = k.div_ceil(32);
    // Row and column tiles, rounded up to pairs for the 2×2 kernel.
    let mt = m.div_ceil(32) * 2;
    let nt = n.div_ceil(32) * 2;
    let mut ap = vec![0u16; mt * kt * TILE];
    let mut bp = vec![0u16; nt * kt * TILE];
    let par = threads > 1 && (m + n) * k >= 1 << 15;
    let pack_a = |(mi, out): (usize, &mut [u16])| pack_a_tile_row(a, m, k, mi, kt, out);
    let pack_b = |(nj, out): (usize, &mut [u16])| pack_b_tile_col(b, k, n, nj, out);
    if par {
        ap.par_chunks_mut(kt * TILE).enumerate().for_each(pack_a);
        bp.par_chunks_mut(kt * TILE).enumerate().for_each(pack_b);
    } else {
        ap.chunks_mut(kt * TILE).enumerate().for_each(pack_a);
        bp.chunks_mut(kt * TILE).enumerate().for_each(pack_b);
    }
    let (mb, nb) = (mt / 2, nt / 2);
    let (ap, bp) = (&ap, &bp);
    let block = |i: usize, j: usize, buf: &mut [f32; 1024]| {
        let a0 = ap.as_ptr().add(2 * i * kt * TILE);
        let b0 = bp.as_ptr().add(2 * j * kt * TILE);
        kernel_2x2(
            kt,
            a0,
            a0.add(kt * TILE),
            b0,
            b0.add(kt * TILE),
            buf.as_mut_ptr(),
        );
        let (r0, c0) = (32 * i, 32 * j);
        let (nr, nc) = ((m - r0).min(32), (n - c0).min(32));
        for r in 0..nr {
            let d = std::slice::from_raw_parts_mut(dst.at(r0 + r, c0), nc);
            let s = &buf[r * 32..r * 32 + nc];
            if accumulate {
                d.iter_mut().zip(s).for_each(|(d, s)| *d += scale * s);
            } else {
                d.iter_mut().zip(s).for_each(|(d, s)| *d = scale * s);
            }
        }
    };
    // One task per block column (or row when there are more of those): the 2-tile-wide B panel
    // stays in L1/L2 while the packed A streams past it.
    let by_columns = nb >= mb;
    let task = |outer: usize| {
        let mut buf = [0f32; 1024];
        load_config();
        if by_columns {
            (0..mb).for_each(|i| block(i, outer, &mut buf));
        } else {
            (0..nb).for_each(|j| block(outer, j, &mut buf));
        }
        release_tiles();
    };
    let outer = if by_columns { nb } else { mb };
    if par && outer > 1 {
        (0..outer).into_par_iter().for_each(task);
    } else {
        (0..outer).for_each(task);
    }
}
