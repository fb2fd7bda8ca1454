//! What the exact lattice Gaussian costs against the floating-point samplers it replaced, per
//! million draws, on this machine: `cargo run --example noise_cost -p harambee-models`
//! (after a `--workspace` build; add `--release` for figures that mean anything in
//! production, since a debug build slows integer-heavy code more than libm calls).
//!
//! - `StandardNormal` (ziggurat, `f64`): DP-SGD's old noise.
//! - Box–Muller on two uniforms: the central mechanism's old noise.
//! - `LatticeGaussian::sample` (exact discrete Gaussian, integer arithmetic) at the grid-unit
//!   standard deviations DP-SGD uses for a few model sizes, and the central release (snap,
//!   add in integers, convert) per coordinate.

use std::hint::black_box;
use std::time::Instant;

use chacha20::ChaCha20Rng;
use harambee_privacy::mechanism::LatticeGaussian;
use rand_core::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

const N: usize = 1_000_000;

fn main() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    println!("draws: {N}; figures are wall-clock milliseconds per million draws");

    let t = Instant::now();
    let mut acc = 0.0f64;
    for _ in 0..N {
        let draw: f64 = StandardNormal.sample(&mut rng);
        acc += draw;
    }
    black_box(acc);
    report("old DP-SGD: StandardNormal (f64 ziggurat)", t);

    let t = Instant::now();
    let mut acc = 0.0f64;
    for _ in 0..N {
        let u1 = 1.0 - unit(&mut rng);
        let u2 = unit(&mut rng);
        acc += (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    }
    black_box(acc);
    report("old central: Box-Muller (f64)", t);

    for (z, dim) in [
        (1.1, 31usize),
        (1.1, 2_000),
        (1.1, 1_000_000),
        (10.0, 2_000),
    ] {
        let lattice = LatticeGaussian::new(1.0, z, dim).expect("valid parameters");
        let grid_units = lattice.noise_stddev() / lattice.grid();
        let t = Instant::now();
        let mut acc = 0i64;
        for _ in 0..N {
            acc = acc.wrapping_add(lattice.sample(&mut rng));
        }
        black_box(acc);
        report(
            &format!("exact lattice Gaussian, z = {z}, d = {dim} (σ = {grid_units:.0} grid steps)"),
            t,
        );
    }

    let dim = 100_000;
    let noise = LatticeGaussian::new(1.0, 1.1, dim)
        .expect("valid parameters")
        .draw(&mut rng);
    let sum: Vec<f64> = (0..dim).map(|i| (i as f64).sin() * 1e-3).collect();
    let t = Instant::now();
    let mut released = Vec::new();
    for _ in 0..N / dim {
        released = noise.release(black_box(&sum));
    }
    black_box(released);
    report("central release: snap + integer add + convert", t);
}

fn report(what: &str, since: Instant) {
    println!("{:>10.1} ms  {what}", since.elapsed().as_secs_f64() * 1e3);
}

/// A uniform draw from [0, 1) with 53 random bits.
fn unit<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}
