//! Mask expansion throughput, all measured in the same run:
//! - raw keystream (AES-128-CTR and ChaCha20/12/8 writing into a cache-sized buffer);
//! - client mask expansion: k + 1 masks added into a d-word vector (`prg::apply_masks`);
//! - a client's whole masked-input step (quantization + masks, `handle_shares`);
//! - server unmasking (`CollectingUnmaskShares::finish`: reconstruction, mask removal,
//!   dequantization) in real rounds with 10% dropout;
//! - the exact discrete Gaussian sampler (samples per second for several σ) and a round
//!   whose clients add noise (`--only noise`).
//!
//! Run: `cargo bench --workspace --bench masking` (`-- --quick` for a smaller run).
//! Each figure is the best of several repetitions (the machine is shared).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use chacha20::cipher::{KeyIvInit, StreamCipher};
use harambee_secagg::ed25519_dalek::SigningKey;
use harambee_secagg::prg::{Keystream, Sign, apply_masks};
use harambee_secagg::rand_core::{Rng, SeedableRng};
use harambee_secagg::{
    AfterMaskedInputs, ChaCha20Rng, ClientRound, DiscreteGaussian, MaskPrg, Params, ServerRound,
};
use zeroize::Zeroizing;

const GB: f64 = 1e9;

fn best_of<F: FnMut()>(reps: usize, mut f: F) -> Duration {
    (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap()
}

fn raw<C: StreamCipher>(name: &str, mut cipher: C, total: usize, reps: usize) {
    let mut buf = vec![0u8; 16 * 1024];
    let t = best_of(reps, || {
        for _ in 0..total / buf.len() {
            cipher.write_keystream(&mut buf);
            black_box(&buf);
        }
    });
    println!(
        "raw keystream   {name:<14} {:>6.2} GB/s",
        total as f64 / t.as_secs_f64() / GB
    );
}

fn seeds(n: usize) -> Vec<(Zeroizing<[u8; 32]>, Sign)> {
    (0..n)
        .map(|i| {
            (
                Zeroizing::new([i as u8 + 1; 32]),
                if i % 2 == 0 { Sign::Add } else { Sign::Sub },
            )
        })
        .collect()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `--only raw|masks|rounds` runs one section (for profiling).
    let only: Option<String> = std::env::args().skip_while(|a| a != "--only").nth(1);
    let run = |section: &str| only.as_deref().is_none_or(|o| o == section);
    let d: usize = if quick { 100_000 } else { 1_000_000 };
    let reps = if quick { 2 } else { 5 };
    let total = if quick { 1 << 27 } else { 1 << 30 };
    println!("harambee-secagg masking benchmark: d = {d}, 32-bit words, best of {reps}");
    println!();

    let key = [7u8; 32];
    if run("raw") {
        raw(
            "aes-128-ctr",
            ctr::Ctr64LE::<aes::Aes128>::new(&[7u8; 16].into(), &[0u8; 16].into()),
            total,
            reps,
        );
        raw(
            "chacha20",
            chacha20::ChaCha20::new(&key.into(), &[0u8; 12].into()),
            total,
            reps,
        );
        raw(
            "chacha12",
            chacha20::ChaCha12::new(&key.into(), &[0u8; 12].into()),
            total,
            reps,
        );
        raw(
            "chacha8",
            chacha20::ChaCha8::new(&key.into(), &[0u8; 12].into()),
            total,
            reps,
        );
        // The same through the crate's Keystream wrapper (what the masks use).
        for prg in [MaskPrg::Aes128Ctr, MaskPrg::ChaCha20] {
            let mut ks = Keystream::new(prg, &key);
            let mut buf = vec![0u8; 16 * 1024];
            let t = best_of(reps, || {
                for _ in 0..total / buf.len() {
                    ks.fill(&mut buf);
                    black_box(&buf);
                }
            });
            println!(
                "raw keystream   {:<14} {:>6.2} GB/s  (crate wrapper)",
                format!("{prg:?}"),
                total as f64 / t.as_secs_f64() / GB
            );
        }
        println!();
    }

    // Client mask expansion: k pairwise masks plus the self mask over d words.
    for prg in [MaskPrg::Aes128Ctr, MaskPrg::ChaCha20] {
        if !run("masks") {
            break;
        }
        for k in [8usize, 16, 28, 34] {
            let masks = seeds(k + 1);
            let mut out = vec![0u32; d + 1];
            let t = best_of(reps, || apply_masks(prg, black_box(&mut out), &masks));
            let bytes = (k + 1) * (d + 1) * 4;
            println!(
                "client masks    {:<10} k = {k:>2}: {:>6.2} GB/s of keystream, {:>7.1} ms per client",
                format!("{prg:?}"),
                bytes as f64 / t.as_secs_f64() / GB,
                t.as_secs_f64() * 1e3
            );
        }
    }
    println!();

    // Whole rounds: n clients, 10% drop before sending their masked input.
    let n = if quick { 20 } else { 50 };
    for k in [8usize, 16, 28, 34] {
        if run("rounds") {
            round(n, k, d, reps.min(3), 0.0);
        }
    }

    if run("noise") {
        println!();
        let samples = d;
        for sigma in [0.5, 3.0, 100.0, 1e4, 1e6, 1e9] {
            let g = DiscreteGaussian::new(sigma).unwrap();
            let mut rng = ChaCha20Rng::seed_from_u64(7);
            let t = best_of(reps, || {
                let mut acc = 0i64;
                for _ in 0..samples {
                    acc = acc.wrapping_add(g.sample(&mut rng));
                }
                black_box(acc);
            });
            println!(
                "discrete gaussian σ = {sigma:<8e} {:>6.2} M samples/s  ({:>6.1} ms per {samples})",
                samples as f64 / t.as_secs_f64() / 1e6,
                t.as_secs_f64() * 1e3
            );
        }
        round(n, 34, d, reps.min(3), 100.0);
    }
}

/// One round with n clients and k neighbours; prints the client's masked-input step and
/// the server's unmasking.
fn round(n: usize, k: usize, d: usize, reps: usize, noise_stddev: f64) {
    let ids: Vec<u32> = (0..n as u32).collect();
    let mut params = Params::recommended(1, &ids, d, 1.0, 100).unwrap();
    params.neighbours = k;
    params.threshold = k.min(n - 1) / 2 + 1;
    params.n_min = params.threshold;
    let params = params.with_noise(noise_stddev).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let signing: BTreeMap<u32, SigningKey> = ids
        .iter()
        .map(|&id| (id, SigningKey::generate(&mut rng)))
        .collect();
    let verifying: BTreeMap<u32, _> = signing
        .iter()
        .map(|(&id, k)| (id, k.verifying_key()))
        .collect();
    let input: Vec<f32> = (0..d)
        .map(|_| rng.next_u32() as f32 / u32::MAX as f32 * 2.0 - 1.0)
        .collect();
    let n_drop = n / 10;

    let mut client_time = Duration::MAX;
    let mut keys_time = Duration::MAX;
    let mut server_time = Duration::MAX;
    let mut server_time_2 = Duration::MAX;
    let mut n_masks = 0;
    // Alternate between the single-threaded and the two-thread unmasking.
    for rep in 0..2 * reps {
        let mut server = ServerRound::new(params.clone(), verifying.clone()).unwrap();
        let mut clients = BTreeMap::new();
        for &id in &ids {
            let (c, ad) =
                ClientRound::new(params.clone(), id, signing[&id].clone(), &mut rng).unwrap();
            server.receive(id, ad).unwrap();
            clients.insert(id, c);
        }
        let (mut server, routes) = server.finish().unwrap();
        let mut next = BTreeMap::new();
        for (id, c) in clients {
            let start = Instant::now();
            let (c, shares) = c
                .handle_keys(routes[&id].clone(), &verifying, &mut rng)
                .unwrap();
            keys_time = keys_time.min(start.elapsed());
            server.receive(id, shares).unwrap();
            next.insert(id, c);
        }
        let (mut server, routes) = server.finish().unwrap();
        let mut waiting = BTreeMap::new();
        for (id, c) in next {
            let start = Instant::now();
            let (c, masked) = c
                .handle_shares(routes[&id].clone(), &input, 1, &mut rng)
                .unwrap();
            client_time = client_time.min(start.elapsed());
            if (id as usize) < n_drop {
                continue;
            }
            server.receive(id, masked).unwrap();
            waiting.insert(id, c);
        }
        let AfterMaskedInputs::Unmask(mut server, routes) = server.finish().unwrap() else {
            unreachable!()
        };
        let dropouts = routes.values().next().unwrap().dropouts.clone();
        for (id, c) in waiting {
            server
                .receive(id, c.handle_unmask(&routes[&id]).unwrap())
                .unwrap();
        }
        // Masks the server expands: a self mask per survivor, and each dropout's pairwise
        // mask with each surviving neighbour.
        n_masks = (n - n_drop)
            + dropouts
                .iter()
                .map(|&v| {
                    params
                        .graph_neighbours(v)
                        .iter()
                        .filter(|u| !dropouts.contains(u))
                        .count()
                })
                .sum::<usize>();
        let start = Instant::now();
        if rep % 2 == 0 {
            black_box(server.finish().unwrap());
            server_time = server_time.min(start.elapsed());
        } else {
            black_box(server.finish_with_threads(2).unwrap());
            server_time_2 = server_time_2.min(start.elapsed());
        }
    }
    let bytes = n_masks * (d + 1) * 4;
    let client_bytes = (k.min(n - 1) + 1) * (d + 1) * 4;
    println!(
        "round n = {n}, k = {k}, {n_drop} dropouts, noise σ = {} levels:",
        params.noise_stddev
    );
    println!(
        "  client share keys      {:>7.1} ms",
        keys_time.as_secs_f64() * 1e3
    );
    println!(
        "  client masked input    {:>7.1} ms  {:>5.2} GB/s of keystream (quantize + {} masks)",
        client_time.as_secs_f64() * 1e3,
        client_bytes as f64 / client_time.as_secs_f64() / GB,
        k.min(n - 1) + 1
    );
    for (threads, t) in [(1, server_time), (2, server_time_2)] {
        println!(
            "  server unmasking       {:>7.1} ms  {:>5.2} GB/s of keystream ({n_masks} masks, {threads} thread{})",
            t.as_secs_f64() * 1e3,
            bytes as f64 / t.as_secs_f64() / GB,
            if threads == 1 { "" } else { "s" }
        );
    }
}
