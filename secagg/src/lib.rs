//! SecAgg+ secure aggregation (Bell, Bonawitz, Gascón, Lepoint, Raykova 2020, on top of
//! Bonawitz et al. 2017) as pure client and server state machines: the server learns the
//! weighted sum of the clients' vectors and the sum of their weights, and nothing about
//! one client's vector, even when clients drop out at any stage.
//!
//! What this crate does: parameters and their defaults ([`Params`]), the neighbour graph,
//! quantization, key agreement, secret sharing, mask expansion, the messages and their
//! binary encoding ([`messages`]), and one struct per protocol stage on each side
//! ([`client`], [`server`]). What it does not do: any IO. There is no network, file,
//! clock or async runtime here (a test enforces it); randomness is injected as a
//! [`rand_core::CryptoRng`]; deadlines are the driver's business (it calls a stage's
//! `finish` when everyone answered or time is up). It does not authenticate transport
//! senders either: the driver passes the authenticated sender id (from the TLS client
//! certificate) as `from`, and the identity keys (from the certificates) as
//! `VerifyingKey`s.
//!
//! # A round
//!
//! | stage | client (one struct per stage, consuming `self`) | server (`receive` each, then `finish`) |
//! |---|---|---|
//! | advertise keys | [`ClientRound::new`] → [`SignedAdvertisement`] | [`CollectingAdvertisements`] → routes each client its live neighbours' ads |
//! | share keys | [`AwaitingPeerKeys::handle_keys`] → `Vec<EncryptedShare>` | [`CollectingShares`] → routes each client the shares addressed to it |
//! | masked input | [`AwaitingShares::handle_shares`] (input, weight) → [`MaskedInput`] | [`CollectingMaskedInputs`] (adds into a running sum) → [`AfterMaskedInputs`] with an [`UnmaskRequest`] per survivor |
//! | consistency check (optional) | [`AwaitingUnmask::sign_survivors`] → [`ConsistencySignature`] | [`CollectingSignatures`] → a [`ConsistencyProof`] per signer |
//! | unmasking | [`AwaitingUnmask::handle_unmask`] or [`AwaitingConsistency::handle_consistency`] → [`UnmaskShares`] | [`CollectingUnmaskShares::finish`] → [`Aggregate`] |
//!
//! Each client draws two X25519 key pairs (one to encrypt shares, one to agree mask
//! seeds) and a self-mask secret b, commits to b, and signs all three with its Ed25519
//! identity key over the round's parameter digest. It Shamir-shares b and its mask key
//! among its live neighbours (threshold t) and sends each share encrypted with
//! ChaCha20-Poly1305 under a key agreed with that neighbour. Its masked input is
//! `quantize(input) * weight ‖ weight + PRG(b) + Σ± PRG(s_uv)` modulo 2^b, with one
//! pairwise mask per neighbour whose shares it received (added if its id is smaller,
//! subtracted otherwise, so pairs cancel in the sum). To unmask, each survivor reveals its
//! shares of the surviving neighbours' b and of the dropped neighbours' mask keys, never
//! both for one peer; the server reconstructs them from t shares each, checks them against
//! the signed advertisements (commitment to b, public mask key), removes the masks and
//! dequantizes.
//!
//! At the first two stages the server prunes, repeatedly, every client with fewer than t
//! live neighbours (its secrets could never be reconstructed): pruned clients get no
//! routes and end up in [`Aggregate::dropouts`]. From the masked-input stage on, a
//! neighbourhood below t cannot be repaired and the round fails with
//! [`ServerError::BelowThreshold`], naming the stage and the clients that cannot be
//! recovered. Every error caused by a message names the peer at fault
//! ([`ServerError::peer`], [`ClientError::peer`]); a rejected message leaves the stage
//! unchanged. Nothing built from network input panics.
//!
//! # Parameters and what they buy
//!
//! [`Params::recommended`]`(round_id, participants, d, clip, max_weight)` picks:
//!
//! - **Graph**: a Harary graph H(k, n) (a ring in which each client is joined to the k/2
//!   nearest on each side) over a pseudorandom ordering of the participants seeded by the
//!   round id, so neighbourhoods change every round. k is the smallest even number such
//!   that, with t = ⌊k/2⌋ + 1, (a) if each client drops out independently with
//!   probability 10%, the round fails with probability at most 10⁻⁶, and (b) if each
//!   client colludes with the server independently with probability 10%, the colluders
//!   hold t shares of some honest client with probability at most 10⁻⁶ (union bounds over
//!   clients, exact binomial tails). When that k reaches n − 1 it is the complete graph:
//!   classic SecAgg.
//! - **Threshold** t = ⌊degree/2⌋ + 1, a strict majority of each neighbourhood.
//!
//! [`Params::recommended_for`] takes other [`GraphTargets`]: mask expansion is
//! proportional to k + 1, and for n = 100 the graph shrinks from k = 34 (10⁻⁶, the
//! default) to k = 24 at 10⁻⁴ and k = 20 at 10⁻³ (failure and exposure bounds alike).
//!
//! **Security parameter.** The default bounds both failure and exposure by 10⁻⁶ per round,
//! about 2⁻²⁰ ([`GraphTargets::bits`]): σ ≈ 20 bits, at 10% dropouts and 10% colluders.
//! The SecAgg+ paper (Bell et al. 2020) uses 2⁻⁴⁰; here that costs, from the same union
//! bounds, k = 60 at n = 100 and k = 64 at n = 1000 (against 34 and 38), i.e. 1.7–1.8×
//! the mask expansion. A federation chooses with `failure_probability` (the coordinator's
//! [`Params::for_round_with`]); each agent recomputes the graph from it and refuses one
//! weaker than its policy's [`ParamsPolicy::max_failure_probability`] (10⁻⁶ by default).
//!
//! | failure probability | bits | k at n = 100 | k at n = 1000 |
//! |---|---|---|---|
//! | 10⁻² | 6.6 | 16 | 20 |
//! | 10⁻³ | 10.0 | 20 | 24 |
//! | 10⁻⁴ | 13.3 | 24 | 30 |
//! | 10⁻⁶ (default) | 19.9 | 34 | 38 |
//! | 2⁻³⁰ | 30 | 46 | 52 |
//! | 2⁻⁴⁰ | 40 | 60 | 64 |
//!
//! | n | k | t | dropouts always survived (k − t) | P(round fails), 10% / 20% dropout | P(some client exposed), 10% / 20% colluders |
//! |---|---|---|---|---|---|
//! | 10 | 9 (complete) | 5 | 4 | 9·10⁻³ / 0.2 | 9·10⁻³ / 0.2 |
//! | 30 | 29 (complete) | 15 | 14 | 6·10⁻⁷ / 4·10⁻³ | 6·10⁻⁷ / 4·10⁻³ |
//! | 100 | 34 | 18 | 16 | 4·10⁻⁷ / 9·10⁻³ | 5·10⁻⁸ / 2·10⁻³ |
//! | 1000 | 38 | 20 | 18 | 5·10⁻⁷ / 0.04 | 6·10⁻⁸ / 8·10⁻³ |
//! | 5000 | 40 | 21 | 19 | 9·10⁻⁷ / 0.1 | 1·10⁻⁷ / 0.03 |
//!
//! **Dropouts.** A round always survives up to `degree − t` dropouts in total, at any
//! stages and anywhere in the graph ([`Params::guaranteed_dropout_tolerance`]): every
//! client keeps t live neighbours (with the consistency check, also at most
//! n − quorum survivors may fail to sign; with a complete graph that is the tighter bound). Beyond that it survives as long as every survivor (and
//! every dropout whose masks are in the sum) keeps t neighbours that answer the unmask
//! request; the table gives the odds for independent dropouts. In a ring-shaped graph,
//! k/2 dropouts in a row around one client leave it below t; before the masked input the
//! server prunes it, and pruning can cascade along the ring, so a round whose dropouts
//! cluster like that fails even at a low overall rate. Independent dropouts rarely do.
//!
//! **What the server plus colluding clients C learn.** They learn an honest client u's
//! input if C contains t of u's neighbours (they reconstruct u's mask key, and the server
//! legitimately reconstructs u's self mask). Otherwise they learn only the sums of the
//! honest survivors' inputs over the connected components of the graph restricted to
//! honest survivors. H(k, n) is k-vertex-connected, so if C and the dropouts together
//! number fewer than k clients, that is one component: the server learns only the total,
//! which it is meant to learn. Deterministically, then: any coalition of the server with
//! fewer than t clients learns nothing beyond the total when fewer than k − |C| clients
//! drop; the table gives the odds when colluders are spread at random. The graph is a
//! public function of the round id and participant list: a server that chose round ids to
//! place its colluders around a victim would defeat the random-placement odds (the
//! deterministic guarantee stands). With a complete graph the random-placement caveat
//! disappears: exposure needs t colluders, period.
//!
//! **Active server.** A server that deviates from the protocol chooses the parameters, the
//! routes and every unmask request. What holds against it, each with the test that shows
//! it (`tests::split_unmask` is this crate's internal suite; it plays such a server with
//! real clients, keeps every masked vector and every revealed share, and tries to strip
//! the masks off one client's vector):
//!
//! - *Parameters.* [`Params::validate`] only checks that a round can run; it accepts
//!   t = 1, with which every Shamir share is the secret, so a server that tells one
//!   neighbour "X survived" and another "X dropped" reads X's input
//!   (`with_threshold_one_the_same_split_reads_the_input_and_the_check_refuses_it`). A
//!   client that checks the offer with [`Expectation::check`] takes part only when graph,
//!   threshold, word, quantization, weight cap, clip, noise share and n_min are exactly
//!   what [`Params::for_round`] derives from its own task for the offered participants,
//!   the threshold is a strict majority of its neighbours, and its [`ParamsPolicy`]
//!   (consistency check, distributed noise, minimum contributors) is met (`expect::tests`,
//!   one test per refusal).
//! - *Never both secrets of one client.* Per peer, a client reveals the share of its
//!   self-mask secret b or of its mask key s, never both, and it answers one request per
//!   round: `handle_unmask`, `sign_survivors` and `handle_consistency` consume the stage,
//!   so a repeated or conflicting request cannot even be put to it (compile-fail examples
//!   on [`AwaitingUnmask::handle_unmask`] and [`AwaitingConsistency`]), and after signing
//!   a set it reveals only for that set
//!   (`a_client_answers_once_and_after_signing_only_for_the_set_it_signed`). With
//!   t > k/2 the k neighbours of X hold at most k < 2t shares between them, so however the
//!   server splits its requests it never holds t shares of both of X's secrets
//!   (`split_requests_never_yield_both_secrets_of_a_client_at_the_recommended_threshold`,
//!   every split of X's neighbours).
//! - *Without the consistency check that is not enough.* A server that also lies about
//!   X's *neighbours* (each neighbour Y is "dropped" in the requests of t others, X is
//!   "survived" in all) collects b_X and the mask key of every neighbour, and strips every
//!   mask off X's own vector, with no colluder and every request valid on its own
//!   (`without_the_consistency_check_lying_about_the_neighbours_reads_the_input`). So
//!   without the check the protocol protects against an honest-but-curious server only: a
//!   facility that does not trust the coordinator requires it
//!   ([`ParamsPolicy::require_consistency_check`]).
//! - *With the consistency check* (`consistency_check = true`), survivors sign the
//!   survivor and dropout sets before revealing anything and reveal only after seeing
//!   [`Params::consistency_quorum`] = ⌊(n + t − 1)/2⌋ + 1 valid signatures on the same
//!   sets. Any two quorums share t clients, so a server with fewer than t colluders
//!   cannot get two honest clients to answer for different sets: all honest answers come
//!   from one set, in which each client is either a survivor or a dropout, and X's vector
//!   keeps the pairwise masks of its surviving neighbours
//!   (`with_the_consistency_check_split_requests_reveal_at_most_one_story`; the
//!   neighbours' attack above gets nothing at all).
//! - *n_min.* The server refuses to unmask ([`ServerError::BelowMinSurvivors`]) and every
//!   client refuses to reveal or sign ([`ClientError::BelowMinSurvivors`]) for fewer than
//!   [`Params::n_min`] survivors, so no sum of fewer contributors than the round promised
//!   is unmasked and the distributed noise never falls below its target because of
//!   dropouts (`tests/min_survivors.rs`).
//!
//! Key substitution is prevented by the Ed25519 signatures (clients check them against
//! certificate keys, not against what the server says; that is only as strong as the CA:
//! whoever can issue certificates can substitute keys), and replay across rounds or
//! parameter sets by the digest in every signature, KDF and AEAD. This is the consistency
//! round of Bonawitz et al.'s active variant; the other active-adversary measures of Bell
//! et al. (e.g. a graph the server cannot influence, and input validity proofs) are not
//! implemented. An active server can always make the round fail or its result wrong; with
//! the consistency check, checked parameters and fewer than t colluders it cannot make
//! the round reveal one client's input, only the sum over at least n_min survivors.
//!
//! **Quantization and modulus.** Values are clipped to [−c, c], scaled to
//! L = 2^(q−1) − 1 levels and stochastically rounded (unbiased, within one level), then
//! multiplied by the integer weight w ∈ 1..=W; the weight itself is appended as one extra
//! word, so the sum carries the total weight. Arithmetic is modulo 2^b with b = 32 or 64,
//! the native word ([`Word`]); [`Params::validate`] requires n·W·L < 2^(b−1) (n·(W·L + τ)
//! with noise, see below), so the centred sum cannot wrap. `recommended` keeps 32-bit words while q ≥ 16 fits
//! (n·W ≤ 65 537: with n = 100 clients, W ≤ 655) and otherwise switches to 64-bit words
//! (twice the bandwidth), with q = min(24, what fits) either way. Each coordinate of [`Aggregate::sum`] is
//! within `total_weight · c / L` (plus f32 rounding, relative 2^−24) of the exact weighted
//! sum of the clipped inputs: [`Params::error_bound`]. For n = 100, W = 100, c = 1: q = 18
//! and the bound is total_weight · 7.6·10⁻⁶, i.e. 7.6·10⁻⁶ on the weighted mean.
//!
//! # Distributed noise
//!
//! The distributed discrete Gaussian mechanism (Kairouz, Liu, Steinke 2021): with
//! [`Params::noise_stddev`] = σ_q > 0, each client adds to each of its quantized, weighted
//! values an independent sample of the discrete Gaussian N_Z(0, σ_q²) (in quantization
//! levels; the weight word gets none), drawn by an exact sampler ([`noise`], Canonne,
//! Kamath, Steinke 2020) from a ChaCha20 stream seeded by the injected RNG. The server
//! only ever sees the sum, which carries the sum of the survivors' noise: with n
//! survivors, variance n·σ_q² levels², i.e. standard deviation sqrt(n)·σ_q / scale in
//! value units (scale = L / c). No single party, the server included, knows the total
//! noise, and no client has to trust another to add it.
//!
//! - **Choosing σ_q.** For a total standard deviation S (value units) with at least n_min
//!   survivors, σ_q = S·scale / sqrt(n_min): [`noise_share_levels`]. Dropouts take their
//!   noise with them, so with fewer than n_min survivors the noise would be below S:
//!   [`Params::n_min`] makes server and clients refuse to unmask such a sum, and
//!   [`Params::for_round`] calibrates σ_q to it. The target assumes the survivors add
//!   their shares: clients colluding with the server can leave theirs out. Then
//!   [`Params::with_noise`] sets σ_q and re-derives the quantization so the sum still
//!   cannot wrap (rescaling σ_q to keep S if it has to lower q).
//! - **Clamping.** Each sample is clamped to ±τ, τ = ⌈10·σ_q⌉ ([`Params::noise_clamp`]),
//!   so [`Params::validate`] can require n·(W·L + τ) < 2^(b−1) with certainty, and the
//!   server still refuses (as [`ServerError::CorruptAggregate`]) any coordinate beyond
//!   total_weight·L + n·τ. A sample is clamped with probability below 4·10⁻²²; the
//!   effect on a privacy guarantee is an additive n·d·4·10⁻²² on δ (documented at
//!   [`params::NOISE_CLAMP_STDDEVS`]).
//! - **Exactness.** The sampler's variance is σ_q² rounded up to an exact rational (never
//!   less noise than configured, relative excess below 2^−57 for σ_q ≥ 1); see
//!   [`noise`].
//! - **Accounting is the caller's.** This crate adds the noise; it does not compute ε, δ,
//!   nor bound the sensitivity (clipping at c, weights up to W and stochastic rounding
//!   give an L2 sensitivity in levels the caller must bound, as in the paper, including
//!   the rounding's contribution). [`Aggregate::sum`] is then the noisy weighted sum and
//!   [`Params::error_bound`] covers only the quantization, not the noise.
//! - **Cost.** At most about 0.3 µs per sample (3 M samples/s at every σ from 0.5 to 10⁹,
//!   measured on a loaded machine), so noise adds up to about 0.3 s of client CPU per 10⁶
//!   coordinates, more than the masking itself; the server pays nothing.
//!
//! # Performance
//!
//! Mask expansion dominates: a client expands k + 1 masks of d words, the server one per
//! survivor plus, per dropout, one per surviving neighbour. Seeds are expanded with
//! AES-128-CTR (VAES/AES-NI, chosen at run time by the `aes` crate) directly into the
//! output vector, one 16 KiB chunk at a time, all masks per chunk while it is in L1, and
//! quantization is fused into the same pass; the loop is compiled for AVX2 when the CPU
//! has it. Measured on this 2-core Xeon (AVX-512, VAES), d = 10⁶, `cargo bench --workspace
//! --bench masking` (best of 5, machine shared):
//!
//! | keystream (raw, 16 KiB buffer) | GB/s |
//! |---|---|
//! | AES-128-CTR (`aes` + `ctr` crates, used) | 10.5–11.9 |
//! | ChaCha8 / ChaCha12 / ChaCha20 (AVX2) | 5.5 / 3.6 / 2.3 |
//!
//! | work | time | keystream throughput |
//! |---|---|---|
//! | client masks alone, k = 34 (35 masks) | 15–18 ms | 7.6–8.9 GB/s |
//! | client masked input (quantize + 35 masks), n = 50, k = 34 | 20 ms | 6.8–7.1 GB/s |
//! | client share keys (34 X25519 agreements, sharing, AEAD) | 2.8 ms | — |
//! | server unmasking, n = 50, k = 28, 5 dropouts (175 masks), 1 / 2 threads | 84 / 47–58 ms | 8.3 / 12–15 GB/s |
//! | discrete Gaussian noise, 10⁶ samples (`--only noise`), σ = 0.5 … 10⁹ | 290–380 ms* | — |
//! | client masked input with noise σ = 100, n = 50, k = 34 | 308 ms* | — |
//!
//! (*) Measured with the machine heavily loaded (raw AES-CTR at 4.2 GB/s instead of 10.5,
//! client masked input without noise at 32 ms instead of 20): expect less when idle.
//!
//! (Ranges: several runs on a machine shared with other builds.)
//!
//! The gap between raw AES-CTR and client masks (about 20%) is the word additions and the
//! counter blocks. [`MaskPrg::ChaCha20`] is offered for CPUs without AES instructions
//! (about 4× slower here). For the target round (N = 100, d = 10⁶, 10% dropout, k = 34)
//! that is about 2.3 s of client CPU in total (100 × 23 ms) and about 0.2 s for the
//! server's unmasking (about 400 masks; half that on two threads), plus about 1 ms per
//! received vector to add it in. 64-bit words double all of it (and the bandwidth).
//!
//! End to end (`harambee-sim bench secagg --agents 100 --params 1000000 --dropout
//! 0.1`, release, coordinator process plus 100 in-process agents over gRPC/mTLS on the same
//! 2 cores): 2.5–3.0 s per secure round with 1.2–1.3 s of coordinator CPU and 3.6 MB sent
//! per agent, against 1.6 s for the plain round (`--plain`).
//!
//! # Drivers
//!
//! - Randomness: any [`rand_core::CryptoRng`] (rand_core 0.10, re-exported); e.g.
//!   [`ChaCha20Rng`] seeded with 32 bytes from the OS. A seeded RNG replays a round
//!   exactly.
//! - Secrets (X25519 keys, the self-mask secret, shares held for peers, derived keys,
//!   keystream buffers) are zeroized when dropped; the client drops its share-encryption
//!   key after the share stage and its mask secrets after the masked input. Never log
//!   message contents other than ids.
//! - The masked vector is `d + 1` words; [`MaskedWords::to_le_bytes`] /
//!   [`MaskedWords::from_le_bytes`] convert it for chunked streaming. The server keeps no
//!   per-client vector ([`CollectingMaskedInputs::stored_bytes`]).
//! - Stage `finish` calls are CPU-bound (the last one takes about 0.1–0.3 s at d = 10⁶):
//!   run them off the async executor.
//!   [`CollectingUnmaskShares::finish_with_threads`] splits the mask expansion over
//!   scoped threads (same result).

#![deny(clippy::unwrap_used)]

pub mod client;
mod crypto;
pub mod error;
pub mod expect;
mod graph;
pub mod messages;
pub mod noise;
pub mod params;
pub mod prg;
mod quant;
pub mod server;
mod shamir;
#[cfg(test)]
mod tests;

pub use client::{
    AwaitingConsistency, AwaitingPeerKeys, AwaitingShares, AwaitingUnmask, ClientRound,
};
pub use crypto::SHARE_CIPHERTEXT_BYTES;
pub use error::{ClientError, DecodeError, ParamsError, ServerError, Stage};
pub use expect::{Expectation, ParamsField, ParamsMismatch, ParamsPolicy};
pub use messages::{
    ConsistencyProof, ConsistencySignature, EncryptedShare, MaskedInput, MaskedWords, Message,
    RevealedShare, SignedAdvertisement, UnmaskRequest, UnmaskShares, decode_list, encode_list,
};
pub use noise::{DiscreteGaussian, noise_share_levels, sample_discrete_gaussian};
pub use params::{DESIGN_FAILURE_PROBABILITY, GraphTargets, MaskPrg, Params, Word};
pub use server::{
    AfterMaskedInputs, Aggregate, CollectingAdvertisements, CollectingMaskedInputs,
    CollectingShares, CollectingSignatures, CollectingUnmaskShares, ServerRound,
};

/// A seedable CSPRNG implementing [`rand_core::CryptoRng`] (seed it from the OS).
pub use chacha20::ChaCha20Rng;
/// The crates whose types appear in this API, re-exported so drivers use the same versions.
pub use ed25519_dalek;
pub use rand_core;
