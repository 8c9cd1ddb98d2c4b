//! Seeds for the randomized tests: each runs from a fixed, committed seed, prints it, and
//! takes an override from the environment, so a failing seed fails every time and a seed
//! found by `scripts/soak.sh` can be replayed (and then committed as a fixed case).
//!
//! - `DMAPLACE_SEED`: the base seed of the seeded stress tests;
//! - `PROPTEST_RNG_SEED` (and `PROPTEST_CASES`): proptest's own variables, honoured by
//!   [`proptest_config`] (the `proptest!` macro applies them over the fixed default).
#![allow(dead_code)]

use std::io::Write as _;

use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};

/// The base seed of the seeded stress tests when `DMAPLACE_SEED` is unset.
pub const DEFAULT_SEED: u64 = 1;

/// The proptest RNG seed when `PROPTEST_RNG_SEED` is unset.
pub const DEFAULT_PROPTEST_SEED: u64 = 0xd3a9_1ace;

/// Reads a `u64` variable (decimal or `0x` hex); a malformed value is an error, never
/// silently replaced by the default.
pub fn env_u64(var: &str) -> Option<u64> {
    let text = std::env::var(var).ok()?;
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{var}={text:?} is not a u64")))
}

/// Prints past the test harness's capture, so the seed shows with `--nocapture` and in
/// the output of a failing test alike.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The base seed of a seeded stress test: `DMAPLACE_SEED`, else [`DEFAULT_SEED`]; printed
/// with the command that replays it.
pub fn stress_seed(binary: &str, test: &str) -> u64 {
    let seed = env_u64("DMAPLACE_SEED").unwrap_or(DEFAULT_SEED);
    say(&format!(
        "{test}: DMAPLACE_SEED={seed} (replay: DMAPLACE_SEED={seed} cargo test --release -p dmaplace-sim --test {binary} {test})"
    ));
    seed
}

/// A proptest configuration with a fixed RNG seed (`PROPTEST_RNG_SEED` overrides it)
/// and `cases` cases. Failures persist next to `source_file` (`file!()` of the test) as
/// `<file>.proptest-regressions`, to be committed; proptest replays them first.
///
/// Under the `proptest!` macro `PROPTEST_CASES` also overrides `cases`; a test that runs
/// its own `TestRunner` decides its case count itself.
pub fn proptest_config(test: &str, source_file: &'static str, cases: u32) -> Config {
    let seed = env_u64("PROPTEST_RNG_SEED").unwrap_or(DEFAULT_PROPTEST_SEED);
    say(&format!("{test}: PROPTEST_RNG_SEED={seed} (proptest's RNG; failures print the case's own seed)"));
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        source_file: Some(source_file),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..Config::default()
    }
}
