//! The key-value workloads: key and value sizes, GET/SET mix, key
//! popularity, and the key space with every request pre-encoded.
//!
//! # ETC and USR (Atikoglu et al., SIGMETRICS'12, §5 and Table 5)
//!
//! **ETC**, Facebook's general-purpose pool:
//! - key size: generalized extreme value, GEV(μ = 30.7984, σ = 8.20449,
//!   ξ = 0.078688), rounded, clamped to 1..=250 bytes (memcached's limit);
//! - value size: with the probabilities of [`ETC_SMALL_VALUES`] a size of
//!   0..=14 bytes (the table mutilate's `fb_value` uses; 44.1 % of all
//!   values), otherwise generalized Pareto GPD(θ = 0, σ = 214.476,
//!   ξ = 0.348238), the paper's fit; rounded and clamped to
//!   1..=[`WorkloadSpec::value_max`] (default 1024 bytes, "1 B – 1 KB" as
//!   the IX paper describes ETC; about 3.4 % of values sit at the clamp).
//!   Note: mutilate passes `(214.476, 0.348238)` to a constructor whose
//!   parameters are (location, scale, shape = 1), so it actually draws
//!   214.476 + 0.348·(1/U − 1); we use the published fit instead;
//! - 75 % GET, 25 % SET (IX-REFERENCE; the paper's ETC is ~30:1 GET:SET,
//!   IX's evaluation used 75 %).
//!
//! **USR**, the user-account pool: the IX paper gives only "short keys
//! (< 20 B), 2 B values, 99 % GET". We use a fixed key size of 16 bytes
//! for every key, 2-byte values, 99 % GET.
//!
//! # Key space
//!
//! [`WorkloadSpec::keys`] keys (default 100,000). Key `i` is the decimal
//! number `i`, zero-padded to its size (as mutilate builds keys; a size
//! shorter than the number's digits grows to fit, which for ETC's GEV
//! and ≤ 10⁸ keys has probability < 10⁻¹⁵). Key and value sizes are drawn
//! once per key from a hash of (seed, i), so a key always has the same
//! size and every SET of it stores the same number of bytes: a GET hit
//! can then be checked against the value length the key must have.
//! (mutilate draws a fresh value size per SET; for the load's size mix
//! the two are the same, since keys are chosen independently of size.)
//!
//! Popularity: [`Popularity::Uniform`] by default, as mutilate does
//! (`lrand48() % records`); [`Popularity::Zipf`] with exponent `s` (YCSB
//! uses 0.99) by inversion of the exact cumulative table.
//!
//! Every request is encoded once, up front, into one arena
//! ([`KeySpace::arena`]): per key `get <key>\r\n` and
//! `set <key> 0 0 <len>\r\n`; a SET's data and final `\r\n` are the tail of
//! a shared run of value bytes. Sending a request therefore copies nothing
//! (libix slices the arena) or one contiguous `memcpy` per part (Linux).

use std::ops::Range;
use std::rc::Rc;

use serde::Serialize;

use super::proto;

/// Memcached's key length limit.
pub const MAX_KEY: usize = 250;

/// ETC key size: GEV(μ, σ, ξ) from Atikoglu et al., Table 5.
pub const ETC_KEY: Gev = Gev {
    mu: 30.7984,
    sigma: 8.20449,
    xi: 0.078688,
};

/// ETC value size above the small-size table: GPD(θ, σ, ξ) from Atikoglu
/// et al., Table 5.
pub const ETC_VALUE: GenPareto = GenPareto {
    theta: 0.0,
    sigma: 214.476,
    xi: 0.348238,
};

/// Probabilities of ETC value sizes 0, 1, …, 14 bytes (the table that
/// mutilate's `fb_value` generator puts in front of the Pareto fit).
pub const ETC_SMALL_VALUES: [f64; 15] = [
    0.00536, 0.00047, 0.17820, 0.09239, 0.00018, 0.02740, 0.00065, 0.00606, 0.00023, 0.00837,
    0.00837, 0.08989, 0.00092, 0.00326, 0.01980,
];

/// USR key size in bytes.
pub const USR_KEY: usize = 16;

/// USR value size in bytes.
pub const USR_VALUE: usize = 2;

/// Errors building a workload.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WorkloadError {
    /// No keys.
    #[error("the key space is empty: give at least one key")]
    NoKeys,
    /// Too many keys for the arena's 32-bit offsets.
    #[error("{keys} keys do not fit the request arena (4 GiB): use fewer keys")]
    TooManyKeys {
        /// Keys asked for.
        keys: u32,
    },
    /// A value size bound out of range.
    #[error("value_max {0} is out of range: use 1..=1048576 bytes")]
    ValueMax(u32),
    /// A Zipf exponent that is not a positive finite number.
    #[error("zipf exponent {0} is not a positive number")]
    ZipfExponent(f64),
}

/// A small, fast, seeded generator (xoshiro256**, seeded by SplitMix64).
/// Not for cryptography: for reproducible workloads.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

/// SplitMix64's output function: a good 64-bit mix of `x`.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A uniform number in the open interval (0, 1) from 64 random bits.
#[inline]
pub fn unit_open(bits: u64) -> f64 {
    ((bits >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

impl Rng {
    /// A generator whose sequence depends only on `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut s = [0; 4];
        for w in &mut s {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            *w = mix64(x);
        }
        Rng { s }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform number in (0, 1), never exactly 0 or 1.
    #[inline]
    pub fn unit(&mut self) -> f64 {
        unit_open(self.next_u64())
    }

    /// A uniform integer in `0..n` (`n > 0`), by multiply-shift (bias
    /// below 2⁻³² for the sizes used here).
    #[inline]
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }
}

/// The generalized extreme value distribution GEV(μ, σ, ξ), ξ ≠ 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gev {
    /// Location μ.
    pub mu: f64,
    /// Scale σ.
    pub sigma: f64,
    /// Shape ξ.
    pub xi: f64,
}

impl Gev {
    /// Inverse CDF: the value below which a fraction `u` ∈ (0, 1) falls.
    #[inline]
    pub fn quantile(&self, u: f64) -> f64 {
        self.mu + self.sigma * ((-u.ln()).powf(-self.xi) - 1.0) / self.xi
    }

    /// CDF: exp(−(1 + ξ(x − μ)/σ)^(−1/ξ)) where the support allows.
    pub fn cdf(&self, x: f64) -> f64 {
        let t = 1.0 + self.xi * (x - self.mu) / self.sigma;
        if t <= 0.0 {
            return if self.xi > 0.0 { 0.0 } else { 1.0 };
        }
        (-t.powf(-1.0 / self.xi)).exp()
    }
}

/// The generalized Pareto distribution GPD(θ, σ, ξ), ξ ≠ 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenPareto {
    /// Location θ.
    pub theta: f64,
    /// Scale σ.
    pub sigma: f64,
    /// Shape ξ.
    pub xi: f64,
}

impl GenPareto {
    /// Inverse CDF of the upper tail: the value exceeded with probability
    /// `u` ∈ (0, 1) (equivalent to the quantile at 1 − u, and what a
    /// uniform `u` maps to when sampling).
    #[inline]
    pub fn sample(&self, u: f64) -> f64 {
        self.theta + self.sigma * (u.powf(-self.xi) - 1.0) / self.xi
    }

    /// CDF: 1 − (1 + ξ(x − θ)/σ)^(−1/ξ) for x ≥ θ.
    pub fn cdf(&self, x: f64) -> f64 {
        if x <= self.theta {
            return 0.0;
        }
        let t = 1.0 + self.xi * (x - self.theta) / self.sigma;
        if t <= 0.0 {
            return 1.0;
        }
        1.0 - t.powf(-1.0 / self.xi)
    }

    /// Mean θ + σ/(1 − ξ), finite for ξ < 1.
    pub fn mean(&self) -> Option<f64> {
        (self.xi < 1.0).then(|| self.theta + self.sigma / (1.0 - self.xi))
    }
}

/// The ETC value-size distribution before rounding and clamping: the
/// small-size table, then the Pareto fit.
#[derive(Debug, Clone, Copy)]
pub struct EtcValueSize;

impl EtcValueSize {
    /// Total probability of the small-size table.
    pub fn table_mass() -> f64 {
        ETC_SMALL_VALUES.iter().sum()
    }

    /// A size drawn from two independent uniforms: `u` picks the table
    /// entry or the tail, `v` places a tail sample.
    pub fn sample(u: f64, v: f64) -> f64 {
        let mut sum = 0.0;
        for (size, p) in ETC_SMALL_VALUES.iter().enumerate() {
            sum += p;
            if u < sum {
                return size as f64;
            }
        }
        ETC_VALUE.sample(v)
    }
}

/// Which workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// Facebook ETC: GEV keys, Pareto values, 75 % GET.
    Etc,
    /// Facebook USR: 16-byte keys, 2-byte values, 99 % GET.
    Usr,
}

impl WorkloadKind {
    /// The name used in reports (`etc`, `usr`).
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Etc => "etc",
            WorkloadKind::Usr => "usr",
        }
    }

    /// Fraction of requests that are GETs.
    pub fn get_ratio(self) -> f64 {
        match self {
            WorkloadKind::Etc => 0.75,
            WorkloadKind::Usr => 0.99,
        }
    }
}

/// How keys are chosen for requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Popularity {
    /// Every key equally likely (the default, as in mutilate).
    Uniform,
    /// Key of rank r (0-based) with probability ∝ 1/(r+1)^s.
    Zipf(f64),
}

/// A workload: what requests look like.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadSpec {
    /// ETC or USR.
    pub kind: WorkloadKind,
    /// Number of keys.
    pub keys: u32,
    /// Key popularity.
    pub popularity: Popularity,
    /// Largest value size (ETC's Pareto tail is clamped to it).
    pub value_max: u32,
    /// Seed of key/value sizes and of the request stream.
    pub seed: u64,
}

impl WorkloadSpec {
    /// The workload `kind` over 100,000 uniformly popular keys, values at
    /// most 1024 bytes, seed 1.
    pub fn new(kind: WorkloadKind) -> WorkloadSpec {
        WorkloadSpec {
            kind,
            keys: 100_000,
            popularity: Popularity::Uniform,
            value_max: 1024,
            seed: 1,
        }
    }

    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        if self.keys == 0 {
            return Err(WorkloadError::NoKeys);
        }
        if self.keys > 10_000_000 {
            return Err(WorkloadError::TooManyKeys { keys: self.keys });
        }
        if self.value_max == 0 || self.value_max > 1 << 20 {
            return Err(WorkloadError::ValueMax(self.value_max));
        }
        if let Popularity::Zipf(s) = self.popularity {
            if !(s.is_finite() && s > 0.0) {
                return Err(WorkloadError::ZipfExponent(s));
            }
        }
        Ok(())
    }

    /// Size of key `i` in bytes (before growing to fit its digits).
    pub fn key_size(&self, i: u32) -> usize {
        match self.kind {
            WorkloadKind::Etc => {
                let u = unit_open(mix64(self.seed ^ mix64(u64::from(i) << 1)));
                (ETC_KEY.quantile(u).round()).clamp(1.0, MAX_KEY as f64) as usize
            }
            WorkloadKind::Usr => USR_KEY,
        }
    }

    /// Size of key `i`'s value in bytes.
    pub fn value_size(&self, i: u32) -> usize {
        match self.kind {
            WorkloadKind::Etc => {
                let h = mix64(self.seed ^ mix64((u64::from(i) << 1) | 1));
                let u = unit_open(h);
                let v = unit_open(mix64(h));
                EtcValueSize::sample(u, v)
                    .round()
                    .clamp(1.0, f64::from(self.value_max)) as usize
            }
            WorkloadKind::Usr => USR_VALUE.min(self.value_max as usize),
        }
    }
}

/// Where one key's requests sit in the arena.
#[derive(Debug, Clone, Copy)]
struct KeyEntry {
    /// Offset of `get <key>\r\n`; `set <key> 0 0 <len>\r\n` follows it.
    off: u32,
    key_len: u8,
    get_len: u8,
    set_len: u16,
    value_len: u32,
}

/// Every key's requests, pre-encoded.
#[derive(Debug)]
pub struct KeySpace {
    arena: Rc<[u8]>,
    entries: Vec<KeyEntry>,
    /// Offset of the value run: `value_max` bytes then `\r\n`.
    values_off: usize,
    value_max: usize,
}

impl KeySpace {
    /// Builds the key space of `spec`.
    pub fn build(spec: &WorkloadSpec) -> Result<KeySpace, WorkloadError> {
        spec.validate()?;
        let value_max = spec.value_max as usize;
        let digits = (spec.keys - 1).max(1).ilog10() as usize + 1;
        let mut arena = Vec::with_capacity(value_max + 2 + spec.keys as usize * 64);
        // The value run: SET data is its last `len` bytes plus "\r\n".
        arena.extend((0..value_max).map(|i| b'a' + (i % 26) as u8));
        arena.extend_from_slice(b"\r\n");
        let mut entries = Vec::with_capacity(spec.keys as usize);
        let mut key = [0u8; MAX_KEY];
        for i in 0..spec.keys {
            let len = spec.key_size(i).max(digits).min(MAX_KEY);
            write_padded(&mut key[..len], i);
            let value_len = spec.value_size(i);
            let off = arena.len();
            if off > u32::MAX as usize - 1024 {
                return Err(WorkloadError::TooManyKeys { keys: spec.keys });
            }
            proto::encode_get(&key[..len], &mut arena);
            let get_len = arena.len() - off;
            proto::encode_set_header(&key[..len], value_len, &mut arena);
            let set_len = arena.len() - off - get_len;
            entries.push(KeyEntry {
                off: off as u32,
                key_len: len as u8,
                get_len: get_len as u8,
                set_len: set_len as u16,
                value_len: value_len as u32,
            });
        }
        Ok(KeySpace {
            arena: arena.into(),
            entries,
            values_off: 0,
            value_max,
        })
    }

    /// The arena every request range points into.
    pub fn arena(&self) -> &Rc<[u8]> {
        &self.arena
    }

    /// Number of keys.
    pub fn len(&self) -> u32 {
        self.entries.len() as u32
    }

    /// Whether there are no keys (never, once built).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Key `i`'s bytes.
    pub fn key(&self, i: u32) -> &[u8] {
        let e = self.entries[i as usize];
        let start = e.off as usize + 4;
        &self.arena[start..start + e.key_len as usize]
    }

    /// Key `i`'s value size.
    pub fn value_len(&self, i: u32) -> usize {
        self.entries[i as usize].value_len as usize
    }

    /// The bytes of a GET of key `i`: one arena range.
    #[inline]
    pub fn get_request(&self, i: u32) -> Range<usize> {
        let e = self.entries[i as usize];
        let start = e.off as usize;
        start..start + e.get_len as usize
    }

    /// The bytes of a SET of key `i`: the command line, then the data and
    /// its `\r\n`.
    #[inline]
    pub fn set_request(&self, i: u32) -> [Range<usize>; 2] {
        let e = self.entries[i as usize];
        let header = e.off as usize + e.get_len as usize;
        let data_end = self.values_off + self.value_max + 2;
        let data_start = data_end - 2 - e.value_len as usize;
        [header..header + e.set_len as usize, data_start..data_end]
    }

    /// Total bytes of all requests (one GET and one SET per key).
    pub fn arena_len(&self) -> usize {
        self.arena.len()
    }
}

/// Writes `n` in decimal into `out`, zero-padded on the left (`out` must
/// have room for all of `n`'s digits).
fn write_padded(out: &mut [u8], mut n: u32) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Chooses the key of each request.
#[derive(Debug)]
pub enum KeyChooser {
    /// Uniform over `0..n`.
    Uniform(u32),
    /// Zipf by inversion: `cdf[r]` is P(rank ≤ r).
    Zipf {
        /// Cumulative probabilities, increasing, last = 1.
        cdf: Vec<f64>,
    },
}

impl KeyChooser {
    /// A chooser over `keys` keys with `popularity` (rank r is key r).
    pub fn new(keys: u32, popularity: Popularity) -> KeyChooser {
        match popularity {
            Popularity::Uniform => KeyChooser::Uniform(keys),
            Popularity::Zipf(s) => {
                let mut cdf = Vec::with_capacity(keys as usize);
                let mut sum = 0.0;
                for r in 0..keys {
                    sum += (f64::from(r) + 1.0).powf(-s);
                    cdf.push(sum);
                }
                for c in &mut cdf {
                    *c /= sum;
                }
                KeyChooser::Zipf { cdf }
            }
        }
    }

    /// The next key.
    #[inline]
    pub fn choose(&self, rng: &mut Rng) -> u32 {
        match self {
            KeyChooser::Uniform(n) => rng.below(*n),
            KeyChooser::Zipf { cdf } => {
                let u = rng.unit();
                (cdf.partition_point(|&c| c < u) as u32).min(cdf.len() as u32 - 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quantile(sorted: &[f64], q: f64) -> f64 {
        sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
    }

    fn sorted_samples(n: usize, mut f: impl FnMut(&mut Rng) -> f64) -> Vec<f64> {
        let mut rng = Rng::new(42);
        let mut v: Vec<f64> = (0..n).map(|_| f(&mut rng)).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    #[test]
    fn rng_is_reproducible_and_uniform_in_the_open_interval() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let mut r = Rng::new(7);
        assert!(a.iter().all(|&x| x == r.next_u64()));
        assert_ne!(Rng::new(8).next_u64(), a[0]);
        let v = sorted_samples(100_000, Rng::unit);
        assert!(v[0] > 0.0 && v[v.len() - 1] < 1.0);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        for q in [0.1, 0.5, 0.9] {
            assert!((quantile(&v, q) - q).abs() < 0.01);
        }
        let mut r = Rng::new(3);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[r.below(10) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn gev_samples_match_the_analytic_cdf() {
        let v = sorted_samples(200_000, |r| ETC_KEY.quantile(r.unit()));
        for q in [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99] {
            let x = quantile(&v, q);
            assert!((ETC_KEY.cdf(x) - q).abs() < 0.005, "q {q}: x {x}");
        }
        // The paper's key sizes centre near 30 bytes.
        let median = quantile(&v, 0.5);
        assert!((median - 33.8).abs() < 0.3, "median {median}");
    }

    #[test]
    fn gpd_samples_match_the_analytic_cdf_and_mean() {
        let v = sorted_samples(400_000, |r| ETC_VALUE.sample(r.unit()));
        for q in [0.1, 0.5, 0.9, 0.99] {
            let x = quantile(&v, q);
            assert!((ETC_VALUE.cdf(x) - q).abs() < 0.005, "q {q}: x {x}");
        }
        // ξ ≈ 0.35 < 1/2: finite variance, so the sample mean converges.
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let want = ETC_VALUE.mean().unwrap();
        assert!((mean - want).abs() / want < 0.02, "mean {mean} vs {want}");
    }

    #[test]
    fn etc_value_sizes_follow_the_small_table_then_the_tail() {
        let spec = WorkloadSpec::new(WorkloadKind::Etc);
        let n = 100_000u32;
        let mut counts = [0u32; 15];
        let mut over = 0;
        for i in 0..n {
            let s = spec.value_size(i);
            assert!((1..=1024).contains(&s));
            if s < 15 {
                counts[s] += 1;
            }
            if s == 1024 {
                over += 1;
            }
        }
        // Sizes 2 and 3 come almost only from the table (the Pareto tail
        // puts < 1 % of its mass below 4 bytes).
        let p2 = f64::from(counts[2]) / f64::from(n);
        let p3 = f64::from(counts[3]) / f64::from(n);
        assert!((p2 - 0.1782).abs() < 0.01, "p2 {p2}");
        assert!((p3 - 0.0924).abs() < 0.01, "p3 {p3}");
        // Mass clamped at 1024: (1 − table) · P(GPD ≥ 1023.5).
        let want = (1.0 - EtcValueSize::table_mass()) * (1.0 - ETC_VALUE.cdf(1023.5));
        let got = f64::from(over) / f64::from(n);
        assert!((got - want).abs() < 0.005, "{got} vs {want}");
    }

    #[test]
    fn etc_key_sizes_are_clamped_and_fixed_per_key() {
        let spec = WorkloadSpec::new(WorkloadKind::Etc);
        let sizes: Vec<usize> = (0..50_000).map(|i| spec.key_size(i)).collect();
        assert!(sizes.iter().all(|s| (1..=MAX_KEY).contains(s)));
        assert_eq!(spec.key_size(123), sizes[123]);
        let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
        // The analytic mean of the rounded, clamped GEV, by the midpoint
        // rule over its quantile function (≈ 36.2 bytes).
        let grid = 1_000_000;
        let want = (0..grid)
            .map(|k| {
                let u = (k as f64 + 0.5) / grid as f64;
                ETC_KEY.quantile(u).round().clamp(1.0, MAX_KEY as f64)
            })
            .sum::<f64>()
            / grid as f64;
        assert!((mean - want).abs() < 0.2, "mean {mean} vs {want}");
        let other = WorkloadSpec {
            seed: 2,
            ..spec.clone()
        };
        assert_ne!(
            (0..100).map(|i| other.key_size(i)).collect::<Vec<_>>(),
            sizes[..100]
        );
    }

    #[test]
    fn usr_has_short_keys_and_two_byte_values() {
        let spec = WorkloadSpec::new(WorkloadKind::Usr);
        let ks = KeySpace::build(&spec).unwrap();
        for i in [0, 1, 99_999] {
            assert_eq!(ks.key(i).len(), USR_KEY);
            assert_eq!(ks.value_len(i), 2);
        }
        assert_eq!(ks.key(42), b"0000000000000042");
        assert!(WorkloadKind::Usr.get_ratio() > 0.98);
    }

    #[test]
    fn key_space_encodes_get_and_set_requests() {
        let spec = WorkloadSpec {
            keys: 1000,
            ..WorkloadSpec::new(WorkloadKind::Etc)
        };
        let ks = KeySpace::build(&spec).unwrap();
        let a = ks.arena();
        for i in [0, 7, 999] {
            let key = ks.key(i);
            assert!(key.len() >= 3);
            assert_eq!(std::str::from_utf8(key).unwrap().parse::<u32>().unwrap(), i);
            let get = &a[ks.get_request(i)];
            assert_eq!(get, [b"get ", key, b"\r\n"].concat());
            let [hdr, data] = ks.set_request(i);
            let len = ks.value_len(i);
            let want = format!("set {} 0 0 {len}\r\n", std::str::from_utf8(key).unwrap());
            assert_eq!(&a[hdr], want.as_bytes());
            assert_eq!(a[data.clone()].len(), len + 2);
            assert!(a[data].ends_with(b"\r\n"));
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut s = WorkloadSpec::new(WorkloadKind::Etc);
        s.keys = 0;
        assert_eq!(KeySpace::build(&s).unwrap_err(), WorkloadError::NoKeys);
        s.keys = 10;
        s.value_max = 0;
        assert_eq!(s.validate(), Err(WorkloadError::ValueMax(0)));
        s.value_max = 10;
        s.popularity = Popularity::Zipf(f64::NAN);
        assert!(matches!(s.validate(), Err(WorkloadError::ZipfExponent(_))));
    }

    #[test]
    fn uniform_chooser_covers_keys_evenly() {
        let c = KeyChooser::new(100, Popularity::Uniform);
        let mut rng = Rng::new(5);
        let mut counts = [0u32; 100];
        for _ in 0..200_000 {
            counts[c.choose(&mut rng) as usize] += 1;
        }
        assert!(counts.iter().all(|&n| (1_700..2_300).contains(&n)));
    }

    #[test]
    fn zipf_chooser_matches_rank_probabilities() {
        let n = 1000u32;
        let s = 0.99;
        let c = KeyChooser::new(n, Popularity::Zipf(s));
        let h: f64 = (1..=n).map(|r| f64::from(r).powf(-s)).sum();
        let mut rng = Rng::new(9);
        let draws = 500_000;
        let mut counts = vec![0u32; n as usize];
        for _ in 0..draws {
            counts[c.choose(&mut rng) as usize] += 1;
        }
        for r in [0usize, 1, 9, 99] {
            let want = (r as f64 + 1.0).powf(-s) / h;
            let got = f64::from(counts[r]) / draws as f64;
            assert!(
                (got - want).abs() / want < 0.05,
                "rank {r}: {got} vs {want}"
            );
        }
    }
}
