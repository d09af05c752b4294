//! A fixed-size histogram of millisecond values with logarithmic buckets.
//!
//! Eight buckets per power of two, so any value is known to within 12.5 %;
//! every `u64` of milliseconds (0 ms to about 585 million years) falls in
//! one of [`BUCKETS`] (496) buckets, so no value is ever reported below the
//! truth, however long. That is 496 counters of 8 bytes: under 4 KiB per
//! histogram. Recording is one atomic add: no lock, no allocation, and the
//! memory never grows.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of the sub-bucket within a power of two: 2^3 = 8 sub-buckets.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// The bits of the largest value: every `u64` has a bucket of its own
/// width (a last bucket shared by larger values would report them below
/// the truth).
const MAX_BITS: u32 = u64::BITS;

/// The number of buckets, whatever is recorded.
pub(crate) const BUCKETS: usize = (MAX_BITS - SUB_BITS + 1) as usize * SUB;

/// Counts of values per bucket.
pub(crate) struct LogHistogram {
    counts: Box<[AtomicU64]>,
}

impl LogHistogram {
    pub(crate) fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts one value.
    #[inline]
    pub(crate) fn record(&self, millis: u64) {
        self.counts[bucket_of(millis)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts as they are now, for a snapshot.
    pub(crate) fn counts(&self) -> Counts {
        Counts(
            self.counts
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
        )
    }
}

/// A copy of a histogram's counts, read once.
pub(crate) struct Counts(Vec<u64>);

impl Counts {
    /// How many values were recorded.
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The bucket holding the value of rank `ceil(q × total)`, as the
    /// largest value it can hold: never below the true quantile, at most
    /// 12.5 % above it. `None` when nothing was recorded.
    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        // Rounded up, and at least the first value.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, &count) in self.0.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(upper_bound(bucket));
            }
        }
        Some(upper_bound(BUCKETS - 1))
    }

    /// How many recorded values exceed `millis` (counted by bucket, so a
    /// value in the bucket holding `millis` does not count).
    pub(crate) fn above(&self, millis: u64) -> u64 {
        self.0[bucket_of(millis) + 1..].iter().sum()
    }

    /// The non-empty buckets, as (lowest value, highest value, count).
    pub(crate) fn non_empty(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, &count)| count > 0)
            .map(|(bucket, &count)| (lower_bound(bucket), upper_bound(bucket), count))
    }
}

/// The bucket a value falls in.
#[inline]
pub(crate) fn bucket_of(millis: u64) -> usize {
    if millis < SUB as u64 {
        // Exact: one bucket per value.
        #[allow(clippy::cast_possible_truncation)]
        return millis as usize;
    }
    let exponent = 63 - millis.leading_zeros();
    let octave = (exponent - SUB_BITS + 1) as usize;
    #[allow(clippy::cast_possible_truncation)]
    let sub = ((millis >> (exponent - SUB_BITS)) as usize) & (SUB - 1);
    octave * SUB + sub
}

/// The smallest value of a bucket.
pub(crate) fn lower_bound(bucket: usize) -> u64 {
    let (octave, sub) = (bucket / SUB, (bucket % SUB) as u64);
    if octave == 0 {
        return sub;
    }
    (SUB as u64 + sub) << (octave - 1)
}

/// The largest value of a bucket.
pub(crate) fn upper_bound(bucket: usize) -> u64 {
    let octave = bucket / SUB;
    let width: u64 = if octave == 0 { 1 } else { 1 << (octave - 1) };
    // The last bucket ends at `u64::MAX`: `lower + width` would overflow.
    lower_bound(bucket) + (width - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_a_bucket_that_holds_it() {
        let mut value = 0u64;
        loop {
            let bucket = bucket_of(value);
            assert!(
                lower_bound(bucket) <= value && value <= upper_bound(bucket),
                "{value}"
            );
            let Some(next) = value.checked_add(value / 8 + 1) else {
                break;
            };
            value = next;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(upper_bound(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn buckets_are_contiguous_and_at_most_an_eighth_wide() {
        for bucket in 1..BUCKETS {
            assert_eq!(lower_bound(bucket), upper_bound(bucket - 1) + 1);
            let (low, high) = (lower_bound(bucket), upper_bound(bucket));
            assert!(
                (high - low) * 8 <= low.max(8),
                "bucket {bucket}: {low}..={high}"
            );
        }
    }

    #[test]
    fn quantiles_are_within_an_eighth_above_the_true_value() {
        let histogram = LogHistogram::new();
        for minute in 1..=100u64 {
            histogram.record(minute * 60_000);
        }
        let counts = histogram.counts();
        assert_eq!(counts.total(), 100);
        for (q, expected) in [(0.5, 50), (0.9, 90), (0.99, 99), (1.0, 100)] {
            let got = counts.quantile(q).unwrap();
            let expected = expected * 60_000;
            assert!(
                got >= expected && got * 8 <= expected * 9,
                "p{q}: {got} vs {expected}"
            );
        }
        assert_eq!(LogHistogram::new().counts().quantile(0.5), None);
    }

    /// A value years long (and the longest there is) is reported at or
    /// above itself, never at the top of a shared last bucket.
    #[test]
    fn the_longest_values_are_not_reported_below_the_truth() {
        const YEAR: u64 = 365 * 86_400_000;
        for value in [3 * YEAR, 100 * YEAR, u64::MAX / 3, u64::MAX] {
            let histogram = LogHistogram::new();
            histogram.record(value);
            let reported = histogram.counts().quantile(0.99).unwrap();
            assert!(reported >= value, "{value} reported as {reported}");
        }
        assert_eq!(BUCKETS, 496);
    }

    #[test]
    fn above_counts_values_in_later_buckets() {
        let histogram = LogHistogram::new();
        for value in [10, 1_000, 100_000, 100_000] {
            histogram.record(value);
        }
        assert_eq!(histogram.counts().above(50_000), 2);
        assert_eq!(histogram.counts().above(200_000), 0);
    }
}
