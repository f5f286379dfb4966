//! Numeric kernels on the hot path of every protected sum: a float's
//! fixed-point contribution (scaled, clamped, rounded to an integer).
//!
//! # Why this crate exists
//! The rest of the workspace forbids `unsafe`. Summing a Float64 column
//! exactly needs a float-to-integer conversion per row, and on the x86-64
//! baseline (SSE2) the compiler can only do it one value at a time, which
//! made protected sums 1.3-1.5x slower than raw DataFusion sums (issue 14's
//! target is 1.05x). CPUs with AVX-512DQ convert eight values in one
//! instruction, and AVX2 at least lets the clamping vectorize. Using them
//! takes three kinds of `unsafe`, kept here and nowhere else:
//!
//! 1. calling a function compiled for CPU features after checking at run
//!    time that the CPU has them,
//! 2. an unchecked float-to-integer conversion of a value already clamped
//!    into a range where it cannot fail (the checked `as` conversion does
//!    not vectorize), and
//! 3. a prefetch hint for the cache lines of an element of a slice a few
//!    blocks ahead (the CPU's prefetcher stops at page boundaries; a hint
//!    never faults and changes no result).
//!
//! Every version computes exactly what [`fixed_point`] computes, bit for
//! bit; the tests compare them on extreme and random inputs.
//!
//! Depends on nothing.

/// `x` times `unit`, clamped to `[lo, hi]` and rounded half away from
/// zero; NaN becomes 0 (the float-to-integer cast saturates). The one
/// definition of a float's contribution to a protected sum.
///
/// Written with `max`/`min` and a separate NaN test rather than `clamp`
/// (which asserts its bounds on every call), so a loop over a column has no
/// branch.
#[inline(always)]
pub fn fixed_point(x: f64, unit: f64, lo: f64, hi: f64) -> i64 {
    let y = (x * unit).max(lo).min(hi);
    let r = (y + 0.5f64.copysign(y)) as i64;
    if x.is_nan() {
        0
    } else {
        r
    }
}

/// Bounds up to this magnitude take the fast versions: a clamped value,
/// plus or minus one half, is then far inside the range of `i64`.
const FAST_LIMIT: i64 = 1 << 62;

/// How a float becomes its figure in a protected sum: times `unit`
/// (`10^scale`), clamped to `[lo, hi]` (in units of `1 / unit`), rounded
/// (see [`fixed_point`]).
///
/// The figure of a value other than NaN lies in `[lo, hi]` when both
/// bounds are at most 2^52 in magnitude (NaN gives 0, which need not).
/// Beyond, a bound's `f64` can round outward and `y ± 0.5` can round to
/// the next even integer, so a figure can pass its bound by a few units;
/// the policy keeps bounds within 10^15.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedPoint {
    /// `10^scale`.
    pub unit: f64,
    /// Lower bound, in units of `1 / unit`.
    pub lo: i64,
    /// Upper bound, in units of `1 / unit`.
    pub hi: i64,
}

impl FixedPoint {
    /// Figures with `scale` decimal places, clamped to `[lo, hi]`.
    pub fn new(scale: u32, lo: i64, hi: i64) -> FixedPoint {
        FixedPoint {
            unit: 10f64.powi(scale as i32),
            lo,
            hi,
        }
    }

    /// The figure of `x`.
    #[inline(always)]
    pub fn of(&self, x: f64) -> i64 {
        fixed_point(x, self.unit, self.lo as f64, self.hi as f64)
    }

    /// True when the fast versions may run: both bounds are at most 2^62
    /// in magnitude.
    fn fast(&self) -> bool {
        (-FAST_LIMIT..=FAST_LIMIT).contains(&self.lo) && (-FAST_LIMIT..=FAST_LIMIT).contains(&self.hi)
    }
}

/// The figure of every value of `xs`, written to `out` (resized to
/// `xs.len()`).
///
/// Uses the widest vector instructions the running CPU has; the result does
/// not depend on which.
pub fn fixed_points(xs: &[f64], rule: FixedPoint, out: &mut Vec<i64>) {
    // Only new length is zeroed: a reused buffer is overwritten below.
    out.truncate(xs.len());
    out.resize(xs.len(), 0);
    #[cfg(target_arch = "x86_64")]
    if rule.fast() {
        if let Some(version) = x86::best() {
            version.run(xs, rule, out);
            return;
        }
    }
    for (o, x) in out.iter_mut().zip(xs) {
        *o = rule.of(*x);
    }
}

/// Where the sum of `group` in `lane` sits among lanes of `n` groups with
/// `width` slots per group (its count, when `width` is 2, sits right
/// after it): the one layout [`add_fixed_points_to_lanes`] and its callers
/// share.
#[inline(always)]
pub fn lane_slot(lane: usize, group: usize, n: usize, width: usize) -> usize {
    (lane * n + group) * width
}

/// Rows are spread over this many partial figures per group (row `i` to
/// lane `i % LANES`), so consecutive rows of one group do not wait for each
/// other's addition; the caller folds the lanes.
pub const LANES: usize = 8;

/// Adds [`fixed_point`] of every `xs[i]` (bounds `lo`, `hi` in units of
/// `1 / unit`) to its lane slot `lanes[((i % LANES) * n + groups[i]) * width]`
/// and, when `width` is 2, 1 to the slot after it (the group's row count).
/// Rows whose group is `n` or more are skipped, and additions wrap.
///
/// Converting and adding in one pass reads the column once, while the
/// additions hide the memory's latency; converting the whole column first
/// made the conversion pay for it alone. The result does not depend on the
/// CPU's version.
pub fn add_fixed_points_to_lanes(
    lanes: &mut [i64],
    n: usize,
    width: usize,
    groups: &[usize],
    xs: &[f64],
    rule: FixedPoint,
) {
    let target = Lanes { lanes, n, width };
    #[cfg(target_arch = "x86_64")]
    if rule.fast() {
        if let Some(version) = x86::best() {
            version.add_to_lanes(target, groups, xs, rule);
            return;
        }
    }
    target.add_all(groups, xs, |x| rule.of(x));
}

/// Lane slots of `n` groups, `width` slots per group (see
/// [`add_fixed_points_to_lanes`]).
struct Lanes<'a> {
    lanes: &'a mut [i64],
    n: usize,
    width: usize,
}

impl Lanes<'_> {
    /// Adds `figure(xs[i])` for every row (see
    /// [`add_fixed_points_to_lanes`]).
    #[inline(always)]
    fn add_all<T: Copy>(self, groups: &[usize], xs: &[T], figure: impl Fn(T) -> i64) {
        if self.width == 2 {
            add_all::<2, T>(self.lanes, self.n, groups, xs, figure);
        } else {
            add_all::<1, T>(self.lanes, self.n, groups, xs, figure);
        }
    }
}

/// Adds `values[i]` of every row (1 for every row when `values` is `None`)
/// to its lane slot, with the layout, the count and the skipping of
/// [`add_fixed_points_to_lanes`]: its counterpart for figures that are
/// already integers.
pub fn add_to_lanes(lanes: &mut [i64], n: usize, width: usize, groups: &[usize], values: Option<&[i64]>) {
    let target = Lanes { lanes, n, width };
    match values {
        Some(values) => target.add_all(groups, values, |v| v),
        // Every row adds 1: the groups themselves stand in for the values.
        None => target.add_all(groups, groups, |_| 1),
    }
}

/// The lane slots as [`LANES`] slices, one per lane, of `n` groups of `W`
/// slots each (the layout of [`lane_slot`]). Where `lanes` is shorter than
/// `LANES * n * W`, the last slices are short or empty.
///
/// Indexing a lane's own slice by the group checks the one bound that
/// matters (the group is below `n`) in one comparison.
#[inline(always)]
fn split_lanes<const W: usize>(lanes: &mut [i64], n: usize) -> [&mut [[i64; W]]; LANES] {
    let (slots, _) = lanes.as_chunks_mut::<W>();
    let mut parts = slots.chunks_mut(n.max(1));
    std::array::from_fn(|_| {
        if n == 0 {
            Default::default()
        } else {
            parts.next().unwrap_or_default()
        }
    })
}

/// Adds `v` to the first slot of `group` in `lane`, and 1 to the second
/// when there is one (`W` = 2: the group's row count). A group out of the
/// lane's range is skipped.
#[inline(always)]
fn add_one<const W: usize>(lane: &mut [[i64; W]], group: usize, v: i64) {
    if let Some([sum, rest @ ..]) = lane.get_mut(group).map(|s| s.as_mut_slice()) {
        *sum = sum.wrapping_add(v);
        if let [count, ..] = rest {
            *count = count.wrapping_add(1);
        }
    }
}

/// [`Lanes::add_all`] with `W` slots per group, a block of [`BLOCK`] rows
/// at a time: the figures of a block are computed together (vector
/// operations where the CPU has them, whose loads of several cache lines
/// overlap), then added [`LANES`] rows at a time, so that each row's lane
/// is a constant.
#[inline(always)]
fn add_all<const W: usize, T: Copy>(
    lanes: &mut [i64],
    n: usize,
    groups: &[usize],
    xs: &[T],
    figure: impl Fn(T) -> i64,
) {
    let mut lanes = split_lanes::<W>(lanes, n);
    let rows = groups.len().min(xs.len());
    let whole = rows - rows % BLOCK;
    let (groups, tail_groups) = groups.split_at(whole);
    let (xs, tail_xs) = xs.split_at(whole);
    let all = xs;
    for (b, (gs, xs)) in groups.chunks_exact(BLOCK).zip(xs.chunks_exact(BLOCK)).enumerate() {
        prefetch_block(all, (b + AHEAD) * BLOCK);
        let mut v = [0i64; BLOCK];
        for (o, x) in v.iter_mut().zip(xs) {
            *o = figure(*x);
        }
        for (gs, vs) in gs.chunks_exact(LANES).zip(v.chunks_exact(LANES)) {
            for ((lane, g), v) in lanes.iter_mut().zip(gs).zip(vs) {
                add_one::<W>(lane, *g, *v);
            }
        }
    }
    // `whole` is a multiple of LANES, so the tail's lanes continue.
    for (i, (g, x)) in tail_groups.iter().zip(tail_xs).enumerate() {
        if let Some(lane) = lanes.get_mut(i % LANES) {
            add_one::<W>(lane, *g, figure(*x));
        }
    }
}

/// Rows converted together before they are added (a multiple of
/// [`LANES`]).
const BLOCK: usize = 64;

/// How far ahead of the block being added values are prefetched, in
/// blocks (2 KiB of f64s).
///
/// The CPU's own prefetcher follows a stream only within a 4 KiB page, so
/// a loop as fast as this one waits for memory at every page it enters;
/// asking for the lines ahead of time hides that wait. Measured on the
/// PUMS_x1000 benchmark (AVG and SUM by group, in memory): 1.05-1.06x and
/// 0.95x of raw DataFusion without, 1.00x and 0.90x with.
const AHEAD: usize = 4;

/// Bytes in a cache line.
const CACHE_LINE: usize = 64;

/// Asks the CPU to bring the cache lines of `xs[at..at + BLOCK]` (what
/// of it exists) into its cache. A hint only: the result of no
/// computation changes, and the addresses are a function of positions,
/// never of values.
#[inline(always)]
fn prefetch_block<T>(xs: &[T], at: usize) {
    let lines = xs
        .get(at..)
        .unwrap_or_default()
        .iter()
        .take(BLOCK)
        .step_by((CACHE_LINE / std::mem::size_of::<T>().max(1)).max(1));
    for x in lines {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch reads nothing the program sees and never
        // faults; the address is that of an element of `xs`.
        #[allow(unsafe_code, reason = "a prefetch hint has no safe wrapper")]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                std::ptr::from_ref(x).cast::<i8>(),
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = x;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    /// A version of the loop compiled for a set of CPU features.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Version {
        /// AVX-512 F, DQ and VL: eight conversions per instruction.
        Avx512,
        /// AVX2: the clamping and rounding vectorize, the conversion
        /// does not.
        Avx2,
    }

    /// The best version the running CPU supports, if any beats the
    /// baseline loop.
    pub(crate) fn best() -> Option<Version> {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            Some(Version::Avx512)
        } else if std::arch::is_x86_feature_detected!("avx2") {
            Some(Version::Avx2)
        } else {
            None
        }
    }

    /// Calls `$avx512` or `$avx2`, functions compiled for those CPU
    /// features, with `$args`, after asserting at run time that the CPU
    /// has the chosen version's features.
    macro_rules! dispatch {
        ($version:expr, $avx512:ident, $avx2:ident, ($($arg:expr),*)) => {
            match $version {
                Version::Avx512 => {
                    assert!(best() == Some(Version::Avx512), "AVX-512 version on a CPU without it");
                    // SAFETY: the assertion above checked at run time that
                    // the CPU has avx512f, avx512dq and avx512vl, the
                    // features the AVX-512 versions are compiled for.
                    #[allow(unsafe_code, reason = "run-time dispatch to a CPU-specific version")]
                    unsafe {
                        $avx512($($arg),*)
                    }
                }
                Version::Avx2 => {
                    assert!(std::arch::is_x86_feature_detected!("avx2"), "AVX2 version on a CPU without it");
                    // SAFETY: the assertion above checked at run time that
                    // the CPU has avx2, the feature the AVX2 versions are
                    // compiled for.
                    #[allow(unsafe_code, reason = "run-time dispatch to a CPU-specific version")]
                    unsafe {
                        $avx2($($arg),*)
                    }
                }
            }
        };
    }

    impl Version {
        /// True when the running CPU has this version's features.
        #[cfg(test)]
        pub(crate) fn supported(self) -> bool {
            match self {
                Version::Avx512 => best() == Some(Version::Avx512),
                Version::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            }
        }

        /// [`super::fixed_points`] in this version, for a rule whose
        /// bounds are at most 2^62 in magnitude (checked).
        pub(crate) fn run(self, xs: &[f64], rule: super::FixedPoint, out: &mut [i64]) {
            assert!(rule.fast(), "bounds beyond 2^62");
            let (unit, lo, hi) = (rule.unit, rule.lo as f64, rule.hi as f64);
            dispatch!(self, avx512, avx2, (xs, unit, lo, hi, out))
        }

        /// [`super::add_fixed_points_to_lanes`] in this version, for a
        /// rule whose bounds are at most 2^62 in magnitude (checked).
        pub(crate) fn add_to_lanes(
            self,
            lanes: super::Lanes<'_>,
            groups: &[usize],
            xs: &[f64],
            rule: super::FixedPoint,
        ) {
            assert!(rule.fast(), "bounds beyond 2^62");
            let (unit, lo, hi) = (rule.unit, rule.lo as f64, rule.hi as f64);
            dispatch!(self, lanes_avx512, lanes_avx2, (lanes, groups, xs, unit, lo, hi))
        }
    }

    #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
    fn lanes_avx512(lanes: super::Lanes<'_>, groups: &[usize], xs: &[f64], unit: f64, lo: f64, hi: f64) {
        lanes.add_all(groups, xs, |x| in_range(x, unit, lo, hi));
    }

    #[target_feature(enable = "avx2")]
    fn lanes_avx2(lanes: super::Lanes<'_>, groups: &[usize], xs: &[f64], unit: f64, lo: f64, hi: f64) {
        lanes.add_all(groups, xs, |x| in_range(x, unit, lo, hi));
    }

    #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
    fn avx512(xs: &[f64], unit: f64, lo: f64, hi: f64, out: &mut [i64]) {
        for (o, x) in out.iter_mut().zip(xs) {
            *o = in_range(*x, unit, lo, hi);
        }
    }

    #[target_feature(enable = "avx2")]
    fn avx2(xs: &[f64], unit: f64, lo: f64, hi: f64, out: &mut [i64]) {
        for (o, x) in out.iter_mut().zip(xs) {
            *o = in_range(*x, unit, lo, hi);
        }
    }

    /// [`super::fixed_point`] with an unchecked conversion. Sound only for
    /// bounds of magnitude at most 2^62, which every caller asserts.
    #[inline(always)]
    fn in_range(x: f64, unit: f64, lo: f64, hi: f64) -> i64 {
        // `max` and `min` return the other operand when one is NaN, so `y`
        // is never NaN: it lies in [lo, hi] (or is hi when lo > hi).
        let y = (x * unit).max(lo).min(hi);
        // The same half as `0.5.copysign(y)` except for y = -0.0, where
        // both round to 0.
        let t = y + if y < 0.0 { -0.5 } else { 0.5 };
        // SAFETY: `t` is finite and |t| <= 2^62 + 0.5, so its truncation
        // is representable in i64, which is all `to_int_unchecked` needs.
        #[allow(unsafe_code, reason = "the checked conversion does not vectorize")]
        let r = unsafe { t.to_int_unchecked::<i64>() };
        if x.is_nan() {
            0
        } else {
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXTREMES: [f64; 22] = [
        0.0,
        -0.0,
        0.5,
        -0.5,
        1.5,
        -2.5,
        0.49999999999999994,
        -0.49999999999999994,
        4503599627370495.5,
        -4503599627370495.5,
        9007199254740993.0,
        f64::MIN_POSITIVE,
        -f64::MIN_POSITIVE,
        5e-324,
        f64::MAX,
        f64::MIN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        -f64::NAN,
        1e18,
        -1e18,
    ];

    /// Every bound pair the fast versions accept at their edges, and some
    /// they refuse.
    fn bounds() -> Vec<(i64, i64)> {
        let l = FAST_LIMIT;
        vec![
            (0, 50_000_000),
            (-300, 300),
            (-l, l),
            (l - 1, l),
            (-l, -l + 1),
            (5, 3),
            (-l - 1, l + 1),
            (i64::MIN, i64::MAX),
            (0, 0),
        ]
    }

    fn reference(xs: &[f64], rule: FixedPoint) -> Vec<i64> {
        xs.iter()
            .map(|x| fixed_point(*x, rule.unit, rule.lo as f64, rule.hi as f64))
            .collect()
    }

    /// Every version the running CPU has, run directly (not only the one
    /// `fixed_points` would choose), agrees with the scalar definition.
    fn check_all(xs: &[f64], unit: f64, lo: i64, hi: i64) {
        let rule = FixedPoint { unit, lo, hi };
        let want = reference(xs, rule);
        // A reused, longer buffer is overwritten, not appended to.
        let mut got = vec![7; xs.len() + 3];
        fixed_points(xs, rule, &mut got);
        assert_eq!(got, want, "{rule:?}");
        #[cfg(target_arch = "x86_64")]
        if rule.fast() {
            for v in [x86::Version::Avx512, x86::Version::Avx2] {
                if v.supported() {
                    let mut out = vec![0; xs.len()];
                    v.run(xs, rule, &mut out);
                    assert_eq!(out, want, "{v:?}, {rule:?}");
                }
            }
        }
        check_lanes(xs, rule, &want);
    }

    /// The lane slots `add_fixed_points_to_lanes` should produce from the
    /// figures `want`, with row `i` in group `i * 7 % (n + 1)` (group `n`
    /// is out of range and skipped).
    fn lanes_reference(want: &[i64], n: usize, width: usize) -> Vec<i64> {
        let mut lanes = vec![0i64; LANES * n * width];
        for (i, v) in want.iter().enumerate() {
            let g = i * 7 % (n + 1);
            if g < n {
                let at = ((i % LANES) * n + g) * width;
                lanes[at] = lanes[at].wrapping_add(*v);
                if width == 2 {
                    lanes[at + 1] += 1;
                }
            }
        }
        lanes
    }

    /// Every version of the fused lanes kernel agrees with the figures.
    fn check_lanes(xs: &[f64], rule: FixedPoint, want: &[i64]) {
        for n in [1usize, 3, 24] {
            let groups: Vec<usize> = (0..xs.len()).map(|i| i * 7 % (n + 1)).collect();
            for width in [1usize, 2] {
                let reference = lanes_reference(want, n, width);
                let mut lanes = vec![0i64; LANES * n * width];
                add_fixed_points_to_lanes(&mut lanes, n, width, &groups, xs, rule);
                assert_eq!(lanes, reference, "n {n}, width {width}, {rule:?}");
                #[cfg(target_arch = "x86_64")]
                if rule.fast() {
                    for v in [x86::Version::Avx512, x86::Version::Avx2] {
                        if v.supported() {
                            let mut lanes = vec![0i64; LANES * n * width];
                            let target = Lanes {
                                lanes: &mut lanes,
                                n,
                                width,
                            };
                            v.add_to_lanes(target, &groups, xs, rule);
                            assert_eq!(lanes, reference, "{v:?}, n {n}, width {width}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_version_agrees_on_extreme_values() {
        // Lengths that leave every possible tail after whole vectors.
        for len in [0, 1, 7, 8, 9, 17, 33, 63, 64, 65, 100, 200] {
            let xs: Vec<f64> = EXTREMES.iter().cycle().take(len).copied().collect();
            for (lo, hi) in bounds() {
                for unit in [1.0, 100.0, 1e6, 0.5] {
                    check_all(&xs, unit, lo, hi);
                }
            }
        }
    }

    #[test]
    fn the_definition_rounds_half_away_clamps_and_zeroes_nan() {
        assert_eq!(fixed_point(2.5, 1.0, -10.0, 10.0), 3);
        assert_eq!(fixed_point(-2.5, 1.0, -10.0, 10.0), -3);
        assert_eq!(fixed_point(0.125, 100.0, -300.0, 300.0), 13);
        assert_eq!(fixed_point(f64::INFINITY, 100.0, -300.0, 300.0), 300);
        assert_eq!(fixed_point(f64::NEG_INFINITY, 100.0, -300.0, 300.0), -300);
        assert_eq!(fixed_point(f64::NAN, 100.0, -300.0, 300.0), 0);
        assert_eq!(fixed_point(-f64::NAN, 1.0, 5.0, 9.0), 0);
        assert_eq!(fixed_point(1e300, 1.0, 5.0, 9.0), 9);
    }

    /// NaN of every kind (quiet, signalling, either sign, any payload),
    /// -0.0, subnormals and bounds at and around the fast versions' limit
    /// (including lo > hi, and bounds whose f64 rounds past the i64): every
    /// version agrees with the definition.
    #[test]
    fn every_version_agrees_on_nan_payloads_and_limit_bounds() {
        let nans = [
            0x7ff0_0000_0000_0001u64,
            0x7ff4_0000_0000_0000,
            0x7ff7_ffff_ffff_ffff,
            0x7ff8_0000_0000_0000,
            0x7fff_ffff_ffff_ffff,
            0xfff0_0000_0000_0001,
            0xfff8_0000_0000_0000,
            0xffff_ffff_ffff_ffff,
            0x8000_0000_0000_0001, // -5e-324
            0x000f_ffff_ffff_ffff, // largest subnormal
            0x8000_0000_0000_0000, // -0.0
        ];
        let mut xs: Vec<f64> = nans.iter().map(|b| f64::from_bits(*b)).collect();
        xs.extend(EXTREMES);
        xs.extend([
            4611686018427387904.0,
            -4611686018427387904.0,
            4611686018427388928.0,
        ]);
        // More blocks than the prefetch looks ahead, so its hints reach
        // elements, and a tail.
        let xs: Vec<f64> = xs.iter().cycle().take((AHEAD + 3) * BLOCK + 5).copied().collect();
        let l = FAST_LIMIT;
        let edges = [
            -l - 1,
            -l,
            -l + 1,
            l - 1,
            l,
            l + 1,
            (1 << 53) + 1,
            (1 << 52) + 1,
            -(1 << 52) - 1,
            0,
            -1,
            1,
            i64::MIN,
            i64::MAX,
        ];
        for lo in edges {
            for hi in edges {
                for scale in 0..=6 {
                    check_all(&xs, 10f64.powi(scale), lo, hi);
                }
            }
        }
    }

    /// The fused kernel adds the rows both slices have (the shorter's
    /// length), skips groups at or past `n` (up to `usize::MAX`) and writes
    /// nowhere else, whatever `groups` holds.
    #[test]
    fn lanes_take_the_common_rows_and_skip_groups_out_of_range() {
        let rule = FixedPoint::new(2, -300, 300);
        let xs: Vec<f64> = (0..150).map(|i| i as f64 / 3.0 - 20.0).collect();
        let groups: Vec<usize> = (0..170)
            .map(|i| match i % 5 {
                0 => usize::MAX,
                1 => 3,
                _ => i % 3,
            })
            .collect();
        for (g, x) in [
            (&groups[..], &xs[..]),
            (&groups[..100], &xs[..]),
            (&groups[..], &xs[..77]),
        ] {
            for width in [1usize, 2] {
                let n = 3;
                let mut want = vec![0i64; LANES * n * width];
                for (i, (g, x)) in g.iter().zip(x).enumerate() {
                    if *g < n {
                        let at = ((i % LANES) * n + g) * width;
                        want[at] += rule.of(*x);
                        if width == 2 {
                            want[at + 1] += 1;
                        }
                    }
                }
                let mut got = vec![0i64; LANES * n * width];
                add_fixed_points_to_lanes(&mut got, n, width, g, x, rule);
                assert_eq!(got, want, "width {width}, {} groups, {} xs", g.len(), x.len());
                // A buffer too short for the slots is left as it is past
                // its end (no panic).
                let mut short = vec![0i64; 5];
                add_fixed_points_to_lanes(&mut short, n, width, g, x, rule);
            }
        }
    }

    /// The integer counterpart takes the same layout, counts and skipping,
    /// with given values or ones, for every length around the blocks, and
    /// with no groups at all.
    #[test]
    fn integer_lanes_take_the_same_layout() {
        for rows in [0usize, 1, 7, 63, 64, 65, 200, 517] {
            let values: Vec<i64> = (0..rows as i64)
                .map(|i| i * 1_000_003 - 250_000 + i64::MAX / 3 * (i % 2))
                .collect();
            for n in [0usize, 1, 3, 24] {
                let groups: Vec<usize> = (0..rows)
                    .map(|i| if i % 11 == 0 { usize::MAX } else { i * 7 % (n + 2) })
                    .collect();
                for width in [1usize, 2] {
                    for given in [Some(&values[..]), None] {
                        let mut want = vec![0i64; LANES * n * width];
                        for (i, g) in groups.iter().enumerate() {
                            if *g < n {
                                let at = lane_slot(i % LANES, *g, n, width);
                                want[at] = want[at].wrapping_add(given.map_or(1, |v| v[i]));
                                if width == 2 {
                                    want[at + 1] += 1;
                                }
                            }
                        }
                        let mut got = vec![0i64; LANES * n * width];
                        add_to_lanes(&mut got, n, width, &groups, given);
                        assert_eq!(
                            got,
                            want,
                            "{rows} rows, n {n}, width {width}, given {}",
                            given.is_some()
                        );
                    }
                }
            }
        }
        // Fewer values than groups: only the common rows.
        let mut got = vec![0i64; LANES * 2];
        add_to_lanes(&mut got, 2, 1, &[0, 1, 0, 1], Some(&[5, 6]));
        assert_eq!(&got[..4], &[5, 0, 0, 6]);
        assert!(got[4..].iter().all(|v| *v == 0));
        // A buffer too short for the slots is left as it is past its end.
        let mut short = vec![0i64; 3];
        add_to_lanes(&mut short, 4, 2, &[3, 3, 3, 3, 3, 3, 3, 3, 3], None);
        assert_eq!(short, vec![0, 0, 0]);
    }

    /// Past 2^52 a figure can leave its bounds, in the definition itself
    /// (and so in every version): `y + 0.5` rounds to even, and a bound's
    /// f64 can round outward. Callers keep bounds within 2^52 (the policy
    /// refuses bounds past 10^15).
    #[test]
    fn beyond_2_pow_52_a_figure_can_pass_its_bounds() {
        let odd = (1i64 << 52) + 1;
        assert_eq!(FixedPoint::new(0, 0, odd).of(1e300), odd + 1);
        assert_eq!(FixedPoint::new(0, -odd, 0).of(-1e300), -odd - 1);
        let below = FAST_LIMIT - 1;
        assert_eq!(FixedPoint::new(0, below, below).of(0.0), FAST_LIMIT);
        assert_eq!(FixedPoint::new(0, 0, i64::MAX - 511).of(1e300), i64::MAX);
    }

    proptest! {
        #[test]
        fn every_version_agrees_on_random_values(
            xs in proptest::collection::vec(any::<f64>(), 0..200),
            scale in 0u32..=6,
            a in -(1i64 << 62)..=(1i64 << 62),
            b in -(1i64 << 62)..=(1i64 << 62),
        ) {
            check_all(&xs, 10f64.powi(scale as i32), a.min(b), a.max(b));
        }

        /// Up to 2^52 in magnitude, every figure of a non-NaN value lies
        /// within its bounds (what the noise's sensitivity relies on).
        #[test]
        fn figures_stay_within_bounds_up_to_2_pow_52(
            xs in proptest::collection::vec(any::<f64>(), 0..200),
            scale in 0u32..=6,
            a in -(1i64 << 52)..=(1i64 << 52),
            b in -(1i64 << 52)..=(1i64 << 52),
        ) {
            let rule = FixedPoint::new(scale, a.min(b), a.max(b));
            let mut out = Vec::new();
            fixed_points(&xs, rule, &mut out);
            for (x, v) in xs.iter().zip(&out) {
                prop_assert!(x.is_nan() || (rule.lo..=rule.hi).contains(v), "{x} -> {v}, {rule:?}");
            }
        }

        #[test]
        fn every_version_agrees_on_values_near_the_bounds(
            xs in proptest::collection::vec(-2e8f64..2e8, 0..200),
            scale in 0u32..=6,
        ) {
            check_all(&xs, 10f64.powi(scale as i32), -50_000_000, 50_000_000);
        }
    }
}
